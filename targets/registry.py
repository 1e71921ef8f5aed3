"""Declares the built-in targets. Each is a few lines: a name, build/load (codegen/) and a default pipeline."""
from ..codegen.contract import Products, Runner
from .base import Target, register_target


class _InterpreterRunner(Runner):
    def __init__(self, graph, products):
        from ..ir.interpreter import Interpreter
        super().__init__(products)
        self._run = Interpreter(graph).run

    def __call__(self, *tensors):
        return self._run(*tensors)


def _lazy(module: str, fn: str):
    """`module.fn`, imported on first call: `import slimgraph` never imports a codegen (or torch.fx, onnx,
    triton, tvm) until a target is used."""
    def call(*args):
        import importlib
        return getattr(importlib.import_module(module), fn)(*args)
    call.__qualname__ = call.__name__ = f"{module}.{fn}"
    return call


def _codegen(module: str, *fns: str) -> dict:
    """Target fields build/load (and `fns`: host, ...) from a codegen module, imported lazily."""
    return {fn: _lazy(f"slimgraph.codegen.{module}", fn) for fn in ("build", "load", *fns)}


register_target(Target("reference", build=lambda graph: Products(), load=_InterpreterRunner, default_pipeline="",
                       description="the reference interpreter: slow, exact, runs anywhere",
                       reference_fallback=True))

register_target(Target("torch", **_codegen("torch_fx", "host"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> torch.fx GraphModule: torch speed, runs anywhere torch runs",
                       lowers="torch", reference_fallback=True))

register_target(Target("onnx", **_codegen("onnx_runtime"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> ONNX (int4 as com.microsoft MatMulNBits) run by ONNX Runtime",
                       requires=(("onnxruntime", "onnx"), ("onnx", "onnx")), lowers="onnx"))

register_target(Target("cuda", **_codegen("triton.cuda", "host"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> fused Triton kernels + torch on an NVIDIA GPU "
                                   "(TRITON_INTERPRET=1: Triton's CPU interpreter, for tests)",
                       requires=(("triton", "triton"),), unavailable=_lazy("slimgraph.codegen.triton.cuda", "check"),
                       lowers="triton", reference_fallback=True))

register_target(Target("c", **_codegen("c.target", "host"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> plain C99 sources + weights.bin + Makefile (gcc, no Python/TVM at run "
                                   "time): embedded and FPGA-HLS hosts; static shapes (bind-shapes pass)",
                       lowers="c"))

register_target(Target("cpu", **_codegen("tvm.target", "host"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> TVM Relax -> one LLVM shared library for this CPU, run by the Relax VM",
                       requires=(("tvm", "tvm"),), lowers="cpu"))
