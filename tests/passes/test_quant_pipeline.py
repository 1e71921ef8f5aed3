"""Calibrated quantization from a pipeline string: slimgraph.optimize gives GPTQ/AWQ/select-precision
their calibration data (the `calibration=` argument, or the shipped calibration split tokenized with
the model's tokenizer), and says clearly when it cannot."""
import pytest
import torch

import slimgraph
from slimgraph import api, evaluate

transformers = pytest.importorskip("transformers")
GPTQ = "quantize-weights{bits=4,group=16,method=gptq},fuse-dequant-matmul"


class CharTokenizer:
    """Bytes mod the vocab: enough of a tokenizer for the calibration path."""
    def __call__(self, text, return_tensors="pt"):
        class Out:
            input_ids = torch.tensor([[ord(c) % 96 for c in text]])
        return Out()


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512)
    return transformers.LlamaForCausalLM(cfg).eval()


def example():
    return torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(3))


def test_no_tokenizer_is_a_clear_error(llama):
    # a randomly initialised model has no name_or_path to load a tokenizer from
    with pytest.raises(api.OptimizeError, match="quantize-weights needs calibration data.*calibration=ids"):
        slimgraph.optimize(llama, (example(),), pipeline=GPTQ)
    with pytest.raises(api.OptimizeError, match="select-precision needs calibration data"):
        slimgraph.optimize(llama, (example(),), pipeline="select-precision{group=16}")


def test_explicit_calibration_ids(llama):
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    fast = slimgraph.optimize(llama, (example(),), pipeline=GPTQ, calibration=ids)
    assert fast.graph.op_counts().get("qlinear") == 14
    assert "calibration" not in fast.report.pipeline        # the pipeline text stays a pipeline string
    assert fast.report.pipeline.startswith("quantize-weights{group=16,method=gptq}")
    x = example()
    err = (fast(x).logits - llama(x).logits).abs().max()
    assert 0 < float(err.detach()) < 0.5


def test_default_calibration_is_the_shipped_split(llama, monkeypatch):
    seen = []
    real = evaluate.token_ids

    def spy(tok, split="calib", n=32, seq=256, text=None):
        seen.append((split, n, seq))
        return real(tok, split, n, seq, text)
    monkeypatch.setattr(api, "_tokenizer", lambda model: CharTokenizer())
    monkeypatch.setattr(evaluate, "token_ids", spy)
    fast = slimgraph.optimize(llama, (example(),), pipeline=GPTQ)
    assert seen == [("calib", 32, 256)]
    assert fast.graph.op_counts().get("qlinear") == 14


def test_calibration_text_and_select_precision(llama, monkeypatch):
    monkeypatch.setattr(api, "_tokenizer", lambda model: CharTokenizer())
    text = evaluate.load_text("calib")[:4096]
    fast = slimgraph.optimize(llama, (example(),), calibration=text,
                              pipeline="select-precision{target_ppl=0.5,group=16},fuse-dequant-matmul")
    stats = fast.report.passes[0]["stats"]
    assert len(stats["choice"]) == 14 and set(stats["choice"].values()) <= {"int4-g16", "int8"}
    line = next(x for x in str(fast.report).splitlines() if "select-precision" in x and "choice=" in x)
    n_low = sum(v == "int4-g16" for v in stats["choice"].values())
    assert f"int4-g16: {n_low} layers" in line and len(line) < 600   # per-layer maps summarized on one line


@pytest.mark.slow
@pytest.mark.real_model
def test_zoo_tokenizer_loads_offline(smollm2):
    model, tok = smollm2
    found = api._tokenizer(model)
    text = evaluate.load_text("calib")[:2000]
    assert found is not None and found(text).input_ids == tok(text).input_ids
