"""31 transformers architectures (tiny random configs, tests/frontends/hf_tiny.py) through
`slimgraph.optimize(..., target="torch")` match eager within 1e-4 on the example and on a batch-3
input of another length. benchmarks/hf_architectures.py writes the table."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_tiny  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from hf_architectures import compare  # noqa: E402

# slow: the slowest to export and the Llama-like decoders; the default run keeps every family
SLOW = {"deberta-v2", "t5", "mpnet", "swin", "stablelm", "falcon", "gemma3", "wav2vec2", "bart",
        "qwen2", "mistral", "gemma", "phi3", "xlm-roberta"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in hf_tiny.ARCHS])
def test_architecture_matches_eager(name):
    import slimgraph
    model, kw = hf_tiny.build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, example_kwargs=kw, target="torch")
    for call in (kw, hf_tiny.inputs(name, batch=3, seq=9, seed=5)):
        with torch.no_grad():
            want = model(**call)
        assert compare(fast(**call), want) <= 1e-4


def test_at_least_25_architectures_over_all_families():
    families = {}
    for name, spec in hf_tiny.ARCHS.items():
        families.setdefault(spec[0], []).append(name)
    assert len(hf_tiny.ARCHS) >= 25
    assert set(families) == {"encoder", "decoder", "encoder-decoder", "vision", "speech"}
