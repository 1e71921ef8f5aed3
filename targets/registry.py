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


register_target(Target("reference", build=lambda graph: Products(), load=_InterpreterRunner, default_pipeline="",
                       description="the reference interpreter: slow, exact, runs anywhere",
                       reference_fallback=True))


def _torch(fn):
    def call(*args):
        from ..codegen import torch_fx
        return getattr(torch_fx, fn)(*args)
    return call


register_target(Target("torch", build=_torch("build"), load=_torch("load"), host=_torch("host"),
                       default_pipeline="canonicalize,cse,dce",
                       description="IR -> torch.fx GraphModule: torch speed, runs anywhere torch runs",
                       lowers="torch", reference_fallback=True))


def _onnx(fn):
    def call(*args):
        from ..codegen import onnx_runtime
        return getattr(onnx_runtime, fn)(*args)
    return call


register_target(Target("onnx", build=_onnx("build"), load=_onnx("load"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> ONNX (int4 as com.microsoft MatMulNBits) run by ONNX Runtime",
                       requires=(("onnxruntime", "onnx"), ("onnx", "onnx")), lowers="onnx"))


def _cuda(fn):
    def call(*args):
        from ..codegen.triton import cuda
        return getattr(cuda, fn)(*args)
    return call


register_target(Target("cuda", build=_cuda("build"), load=_cuda("load"), host=_cuda("host"),
                       default_pipeline="canonicalize,cse,dce",
                       description="IR -> fused Triton kernels + torch on an NVIDIA GPU "
                                   "(TRITON_INTERPRET=1: Triton's CPU interpreter, for tests)",
                       requires=(("triton", "triton"),), unavailable=_cuda("check"),
                       lowers="triton", reference_fallback=True))


def _c(fn):
    def call(*args):
        from ..codegen.c import target
        return getattr(target, fn)(*args)
    return call


register_target(Target("c", build=_c("build"), load=_c("load"), host=_c("host"), default_pipeline="canonicalize,cse,dce",
                       description="IR -> plain C99 sources + weights.bin + Makefile (gcc, no Python/TVM at run "
                                   "time): embedded and FPGA-HLS hosts; static shapes (bind-shapes pass)",
                       lowers="c"))


def _cpu(fn):
    def call(*args):
        from ..codegen.tvm import target
        return getattr(target, fn)(*args)
    return call


register_target(Target("cpu", build=_cpu("build"), load=_cpu("load"), host=_cpu("host"),
                       default_pipeline="canonicalize,cse,dce",
                       description="IR -> TVM Relax -> one LLVM shared library for this CPU, run by the Relax VM",
                       requires=(("tvm", "tvm"),), lowers="cpu"))
