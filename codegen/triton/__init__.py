"""Triton codegen (the `cuda` target's kernels). `kernels/` holds the hand-written kernel templates
(qlinear, norms, rope, attention) registered in the "triton" lowering table (codegen/lowering.py).
Importing this package does not import triton; the kernel modules do."""
