"""transformers models that are not imported as causal LMs, on the torch and onnx targets, with a padded
attention mask: a decoder's base model (embeddings) and its sequence/token classification heads, an encoder's
task heads, an encoder-decoder called without `use_cache`. Before: the decoders returned their KV cache (a
DynamicCache torch.export cannot output: a raw torch error) unless the call said use_cache=False, and on
`onnx` every padded mask failed, transformers' `padding_mask[batch_idx, kv_idx]` (an index by two tensors)
and `mask & mask` on bools (ONNX BitwiseAnd has no bool kernel) having no lowering."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
import slimgraph  # noqa: E402

V = 96
DEC = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
MODELS = {
    "llama-base": ("LlamaConfig", "LlamaModel", DEC),
    "llama-seqcls": ("LlamaConfig", "LlamaForSequenceClassification", dict(DEC, num_labels=3)),
    "qwen2-tokcls": ("Qwen2Config", "Qwen2ForTokenClassification", dict(DEC, num_labels=3)),
    "bert-qa": ("BertConfig", "BertForQuestionAnswering", dict(DEC, num_key_value_heads=None)),
    "t5": ("T5Config", "T5Model", dict(vocab_size=V, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                       decoder_start_token_id=0)),
}
TARGETS = ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnxruntime") is None, reason="needs onnxruntime"))]


def _inputs(name, batch, seq, seed):
    g = torch.Generator().manual_seed(seed)
    kw = {"input_ids": torch.randint(2, V, (batch, seq), generator=g),
          "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    kw["attention_mask"][0, -2:] = 0
    if name == "t5":
        kw["decoder_input_ids"] = torch.randint(2, V, (batch, 4), generator=g)
    return kw


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(MODELS))
def test_task_heads_match_eager(name, target):
    cfg, cls, kw = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, cfg)(**{k: v for k, v in kw.items() if v is not None})).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(model, example_kwargs=_inputs(name, 2, 7, 1), target=target)
    assert model.config.use_cache in (True, None) or not hasattr(model.config, "use_cache")   # restored
    for call in (_inputs(name, 2, 7, 1), _inputs(name, 3, 9, 5)):
        with torch.no_grad():
            want = model(**call)
        got = fast(**call)
        keys = [k for k in want.keys() if isinstance(want[k], torch.Tensor) and want[k].is_floating_point()]
        assert keys
        for k in keys:
            assert (got[k] - want[k]).abs().max().item() < 1e-4, k


@pytest.mark.skipif(__import__("importlib").util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_onnx_index_by_several_tensors():
    """x[i, j] with broadcasting integer indices, adjacent (the result's dims where the indexed ones were) or
    not (first), and bool & | ^ on the onnx target."""
    class Index(torch.nn.Module):
        def forward(self, x, a, b, m):
            return x[a, b], x[:, a, b], x[:, :, a, b], x[a, :, b], x[a, b, b], x[:, a, :, b], m & (m | ~m[:1]) ^ m[:, :1]

    x, a, b = torch.randn(3, 4, 5, 6), torch.tensor([[0], [2]]), torch.tensor([1, -1, 3])
    m = torch.randn(3, 4) > 0
    fast = slimgraph.optimize(Index(), (x, a, b, m), target="onnx")
    for got, want in zip(fast(x, a, b, m), Index()(x, a, b, m)):
        assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.skipif(__import__("importlib").util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_onnx_index_put():
    """x[i, j] = v (several integer index tensors, adjacent or not, accumulate with repeated indices; MoE
    routing's index_put) and x[mask] = scalar (`y[y > t] = t`) on the onnx target (before: no lowering)."""
    class Put(torch.nn.Module):
        def forward(self, x, a, b, v):
            y = x.clone()
            y[a, b] = v[0, 0, 0]
            z = torch.index_put(x, (torch.arange(3)[:, None, None], a, b), v[0, :2, :3, :1], accumulate=True)
            w = torch.index_put(x, (a, torch.tensor([0, 1, 2]).expand(1, 3), b), v[0, 0, :1])
            u = torch.index_put(x, (torch.tensor([1, 1, 2]),), v, accumulate=True)
            t = x.clone()
            t[t > 0.5] = 0.5
            return y, z, w, u, t

    x, a, b, v = torch.randn(3, 4, 5, 6), torch.tensor([[0], [2]]), torch.tensor([1, 3, 3]), torch.randn(3, 4, 5, 6)
    fast = slimgraph.optimize(Put(), (x, a, b, v), target="onnx")
    for got, want in zip(fast(x, a, b, v), Put()(x, a, b, v)):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
