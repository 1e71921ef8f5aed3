"""Declares the built-in targets. Each is a few lines: a name, a codegen and a default pipeline."""
from .base import Target, register_target


def _reference(graph):
    from ..ir.interpreter import Interpreter
    return Interpreter(graph).run


register_target(Target("reference", _reference, default_pipeline="",
                       description="the reference interpreter: slow, exact, runs anywhere"))
