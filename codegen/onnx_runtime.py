"""Run an IR graph in ONNX Runtime: export it, open an InferenceSession, wrap it as a Runner.

    runner = build_ort_runner(graph)      # CUDA provider when ORT has it, else CPU
    outs = runner(*torch_tensors)          # list of torch tensors, like every Runner
    runner.model                           # the exported onnx.ModelProto
    runner.artifact_files()                # {"model.onnx": bytes} for an artifact directory
"""
from __future__ import annotations

import numpy as np

from .onnx_export import INSTALL_HINT, export_onnx


class OrtRunner:
    def __init__(self, graph, providers=None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"the 'onnx' target needs onnxruntime: {INSTALL_HINT}") from e
        self.model = export_onnx(graph)
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # ORT warns about initializers it folds away; not actionable here
        self.session = ort.InferenceSession(self.model.SerializeToString(), opts, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.graph = graph

    def artifact_files(self) -> dict[str, bytes]:
        """Build products for the artifact directory: the exported model ORT runs."""
        return {"model.onnx": self.model.SerializeToString()}

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


def build_ort_runner(graph, providers=None) -> OrtRunner:
    return OrtRunner(graph, providers)
