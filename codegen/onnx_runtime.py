"""Run an IR graph in ONNX Runtime: the `onnx` target's build (export) and load (open a session).

    products = build(graph)               # {"model.onnx": bytes}: usable by ONNX Runtime without slimgraph
    runner = load(graph, products)        # an OrtRunner; CUDA provider when ORT has it, else CPU
    runner = build_ort_runner(graph)      # both at once (options: providers, threads, spin, ...)
    outs = runner(*torch_tensors)          # list of torch tensors, like every Runner

Sessions run with ORT_ENABLE_ALL, torch's intra-op thread count and ORT's default spin-waiting
(SLIMGRAPH_ORT_SPIN=0 turns it off for machines shared with other jobs). int4 MatMulNBits computes
in f32 (accuracy_level 0, the IR's semantics); SLIMGRAPH_ORT_INT4_ACCURACY=4 (or
int4_accuracy_level=4) lets ORT quantize activations to int8 per block: faster on CPUs with
VNNI, numerically lossier, so opt-in.
"""
from __future__ import annotations
import os

import numpy as np

from .contract import Products, Runner
from .onnx_export import INSTALL_HINT, export_onnx

MODEL = "model.onnx"


def session_options(threads: int | None = None, spin: bool | None = None):
    """ORT session options for slimgraph's exports: all graph optimizations (ORT fuses the
    Pow/ReduceMean/Sqrt/Div RMS norm into SimplifiedLayerNormalization, MatMul+Transpose into
    FusedMatMul, ...), `threads` intra-op threads (default: torch's thread count, as the other
    CPU targets use), sequential execution. Intra-op threads spin-wait between ops (ORT's default)
    unless `spin=False` (or SLIMGRAPH_ORT_SPIN=0): on an idle 2-core machine spinning made SmolLM2
    int4 decode 1.25x faster; on one shared with other jobs spinning threads steal each other's
    cores (1.5x slower there)."""
    import onnxruntime as ort
    import torch
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # ORT warns about initializers it folds away; not actionable here
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    if spin is None:
        spin = os.environ.get("SLIMGRAPH_ORT_SPIN", "1") != "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def build(graph, *, fuse: bool = True, int4_accuracy_level: int | None = None) -> Products:
    """Export the graph to ONNX (the `onnx` target's codegen)."""
    if int4_accuracy_level is None:  # opt-in: 4 quantizes activations to int8 inside MatMulNBits
        int4_accuracy_level = int(os.environ.get("SLIMGRAPH_ORT_INT4_ACCURACY", "0"))
    model = export_onnx(graph, fuse=fuse, int4_accuracy_level=int4_accuracy_level)
    return Products({MODEL: model.SerializeToString()})


def load(graph, products: Products, providers=None, **kwargs) -> "OrtRunner":
    return OrtRunner(graph, products, providers, **kwargs)


class OrtRunner(Runner):
    def __init__(self, graph, products: Products, providers=None, *, threads: int | None = None,
                 spin: bool | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"the 'onnx' target needs onnxruntime: {INSTALL_HINT}") from e
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        super().__init__(products, device="cuda" if self.providers[0].startswith("CUDA") else "cpu")
        try:
            self.session = ort.InferenceSession(products.read_bytes(MODEL), session_options(threads, spin),
                                                providers=self.providers)
        except Exception as e:  # noqa: BLE001 - ORT's kernel lookup errors name only its own node
            from .onnx_kernels import explain_session_error
            raise explain_session_error(self.model, e) from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.graph = graph

    @property
    def model(self):
        """The exported onnx.ModelProto."""
        import onnx
        return onnx.load_from_string(self.products.read_bytes(MODEL))

    def __call__(self, *tensors):
        import torch
        from ..ir.interpreter import bind_symbols
        bind_symbols(self.graph, tensors)  # same signature checks and messages as the interpreter
        feeds = {n: _to_numpy(t) for n, t in zip(self.input_names, tensors)}
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds)]


def _to_numpy(t):
    import torch
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        raise TypeError("bf16 inputs cannot be passed to ONNX Runtime through numpy; cast to f32 first")
    return t.numpy()


def build_ort_runner(graph, providers=None, *, fuse: bool = True, int4_accuracy_level: int | None = None,
                     **kwargs) -> OrtRunner:
    """build + load, with the exporter's and the session's options."""
    return OrtRunner(graph, build(graph, fuse=fuse, int4_accuracy_level=int4_accuracy_level), providers, **kwargs)
