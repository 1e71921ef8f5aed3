"""slimgraph.passes"""
