"""Declares the built-in targets. Each is a few lines: a name, a codegen and a default pipeline."""
from .base import Target, register_target


def _reference(graph):
    from ..ir.interpreter import Interpreter
    return Interpreter(graph).run


register_target(Target("reference", _reference, default_pipeline="",
                       description="the reference interpreter: slow, exact, runs anywhere",
                       reference_fallback=True))


def _torch(graph):
    from ..codegen.torch_fx import build_runner
    return build_runner(graph)


register_target(Target("torch", _torch, default_pipeline="canonicalize,cse,dce",
                       description="IR -> torch.fx GraphModule: torch speed, runs anywhere torch runs",
                       lowers="torch", reference_fallback=True))


def _onnx(graph):
    from ..codegen.onnx_runtime import build_ort_runner
    return build_ort_runner(graph)


register_target(Target("onnx", _onnx, default_pipeline="canonicalize,cse,dce",
                       description="IR -> ONNX (int4 as com.microsoft MatMulNBits) run by ONNX Runtime",
                       requires=(("onnxruntime", "onnx"), ("onnx", "onnx")), lowers="onnx"))
