"""Triton codegen for the `cuda` target: fusion partitioning (partition.py), generated elementwise
kernels (elementwise.py), hand-written kernels (kernels/) and the target's build/load (cuda.py)."""
