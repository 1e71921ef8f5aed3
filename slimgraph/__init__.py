"""slimgraph: a compiler for neural-network inference."""
__version__ = "0.1.0"
