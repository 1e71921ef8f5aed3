"""slimgraph.codegen"""
