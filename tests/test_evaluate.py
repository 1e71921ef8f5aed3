"""slimgraph.evaluate: perplexity and embedding cosine on the shipped corpus."""
import math
from types import SimpleNamespace

import pytest
import torch

from slimgraph import evaluate
from slimgraph.ir import quant_format as Q


class CharTokenizer:
    vocab = 128

    def __call__(self, text, return_tensors="pt"):
        return SimpleNamespace(input_ids=torch.tensor([[min(ord(c), 127) for c in text]]))


def test_uniform_model_has_vocab_size_perplexity():
    uniform = lambda ids: torch.zeros(1, ids.shape[1], CharTokenizer.vocab)
    ppl = evaluate.perplexity(uniform, CharTokenizer(), "hello world " * 100, window=64, max_tokens=1000)
    assert ppl == pytest.approx(CharTokenizer.vocab, rel=1e-5)


def test_perplexity_shows_progress_on_request(capsys):
    uniform = lambda ids: torch.zeros(1, ids.shape[1], CharTokenizer.vocab)
    text = "hello world " * 100
    quiet = evaluate.perplexity(uniform, CharTokenizer(), text, window=64, max_tokens=1000, progress=False)
    assert capsys.readouterr().err == ""
    shown = evaluate.perplexity(uniform, CharTokenizer(), text, window=64, max_tokens=1000, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet and "perplexity:" in err and "/1000 [" in err     # tokens done of the total, on stderr


def test_oracle_model_has_perplexity_one_and_windows_are_independent():
    text = "the quick brown fox jumps over the lazy dog. " * 30
    ids = CharTokenizer()(text).input_ids[0]
    seen = []

    def oracle(chunk):   # knows the text; records each window's length
        seen.append(chunk.shape[1])
        start = next(i for i in range(len(ids)) if torch.equal(ids[i:i + chunk.shape[1]], chunk[0]))
        nxt = ids[start + 1:start + chunk.shape[1] + 1]
        logits = torch.full((1, chunk.shape[1], 128), -30.0)
        logits[0, torch.arange(len(nxt)), nxt] = 30.0
        return (logits,)                     # tuple outputs (compiled models) are accepted
    ppl = evaluate.perplexity(oracle, CharTokenizer(), text, window=100, max_tokens=450)
    assert ppl == pytest.approx(1.0, abs=1e-6)
    assert seen == [100, 100, 100, 100, 50]


def test_corpus_splits_are_disjoint_and_large():
    ev, ca = evaluate.load_text("eval"), evaluate.load_text("calib")
    paragraphs = lambda t: {p for p in t.split("\n\n") if len(p) > 200}
    assert not paragraphs(ev) & paragraphs(ca)
    assert len(ev.split()) + len(ca.split()) > 55_000    # 100k SmolLM2 tokens (checked in the slow test)
    with pytest.raises(ValueError, match="unknown corpus split 'test'"):
        evaluate.load_text("test")


def test_sentences_are_prose():
    s = evaluate.sentences(200)
    assert len(set(s)) == 200
    assert all(x[0].isupper() and x[-1] in ".!?" for x in s)
    assert not any("::=" in x for x in s)     # grammar rules are skipped


def test_embedding_cosine_identity_and_noise():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(128, 16)

    def tok(texts, **kw):
        n = max(len(t) for t in texts)
        ids = torch.tensor([[ord(c) % 128 for c in t] + [0] * (n - len(t)) for t in texts])
        return {"input_ids": ids, "attention_mask": (torch.arange(n) < torch.tensor([len(t) for t in texts])[:, None]).long()}
    model = lambda input_ids, attention_mask: (emb(input_ids),)
    noisy = lambda input_ids, attention_mask: (emb(input_ids) + 0.5 * torch.randn(*input_ids.shape, 16),)
    texts = evaluate.sentences(40)
    assert evaluate.embedding_cosine(model, model, tok, texts) == pytest.approx(1.0, abs=1e-6)
    assert 0.3 < evaluate.embedding_cosine(model, noisy, tok, texts) < 0.999


def quantize_linears_(model, bits, group, sym, skip=("lm_head",)):
    """RTN-quantize every nn.Linear weight in place (what quantize-weights + dequantize compute)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and not any(s in name for s in skip):
                q, s, z = Q.quantize_rtn(m.weight, bits, group, sym)
                qw, sc, zs = Q.store(q, s, z, bits, sym)
                m.weight.copy_(Q.dequantize(qw, sc, zs, bits, group))


@pytest.mark.slow
@pytest.mark.real_model
def test_corpus_token_count_and_smollm2_perplexity(smollm2):
    import copy
    model, tok = smollm2
    n = sum(len(tok(evaluate.load_text(s)).input_ids) for s in evaluate.SPLITS)
    assert n >= 100_000
    base = evaluate.perplexity(model, tok, max_tokens=1024)
    assert 3 < base < 40, base
    q8 = copy.deepcopy(model)
    quantize_linears_(q8, 8, 0, True)
    assert abs(evaluate.perplexity(q8, tok, max_tokens=1024) / base - 1) < 0.005   # int8 per-channel: < 0.5%


def gptq_linears_(model, batch, bits, group):
    """Sequential GPTQ of every nn.Linear: each weight is quantized from its input in one calibration forward."""
    from slimgraph.passes.calibration import Stats
    from slimgraph.passes.gptq import gptq_quantize
    cache, hooks = {}, []

    def pre(mod, args):
        if cache.get("x") is not args[0]:
            cache.update(x=args[0], stats=Stats.of(args[0]))
        codes, s, z = gptq_quantize(mod.weight, cache["stats"].hessian, bits, group, False)
        mod.weight.copy_(Q.dequantize(*Q.store(codes, s, z, bits, False), bits, group))
    hooks = [m.register_forward_pre_hook(pre) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.slow
@pytest.mark.real_model
def test_minilm_embedding_cosine_int8_and_int4(minilm):
    import copy
    model, tok = minilm
    texts = evaluate.sentences(200)
    q8 = copy.deepcopy(model)
    quantize_linears_(q8, 8, 0, True)
    assert 0.995 <= evaluate.embedding_cosine(model, q8, tok, texts) < 1.0
    rtn4, gptq4 = copy.deepcopy(model), copy.deepcopy(model)
    quantize_linears_(rtn4, 4, 32, False)
    gptq_linears_(gptq4, tok(evaluate.sentences(128, "calib"), padding=True, return_tensors="pt"), 4, 32)
    cos_rtn, cos_gptq = (evaluate.embedding_cosine(model, m, tok, texts) for m in (rtn4, gptq4))
    assert cos_rtn < cos_gptq and 0.98 <= cos_gptq < 1.0, (cos_rtn, cos_gptq)
