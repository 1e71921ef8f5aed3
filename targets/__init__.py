"""slimgraph.targets"""
