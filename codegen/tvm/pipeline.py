"""The Relax pass pipeline of the `cpu` target: TVM's CPU default (legalize, fuse, lower) for now."""
from __future__ import annotations


def relax_pipeline(target):
    from tvm import relax
    return relax.get_default_pipeline(target)
