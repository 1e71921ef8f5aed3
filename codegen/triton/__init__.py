"""Triton codegen for the `cuda` target: fusion partitioning (partition.py), generated elementwise
kernels (elementwise.py), hand-written kernel templates (kernels/: qlinear, norms, rope, attention, the
"triton" lowering table) and the target's build/load (cuda.py). Importing this package does not
import triton; the kernel modules do."""
