"""A compiled model checks its inputs at the call (`model(...)` and `model.run(...)`): a wrong count,
dtype, rank, static dim or inconsistent symbolic dim is refused with the input, the expected and the
given type, instead of running silently or failing deep in a kernel."""
import pytest
import torch
from torch import nn

import slimgraph
from slimgraph.guards import GuardError
from slimgraph import ir
from slimgraph.ir.types import TensorType
from slimgraph.signature import InputCheck, SignatureError


def mlp_compiled_for_4x16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    return model, slimgraph.optimize(model, (torch.randn(4, 16),), target="torch")


def test_static_dims_specialized_from_the_example_are_refused():
    model, fast = mlp_compiled_for_4x16()
    assert str(fast.graph.inputs[0].type) == "f32[4,16]"
    x = torch.randn(4, 16)
    torch.testing.assert_close(fast(x), model(x))                     # the compiled shape runs
    with pytest.raises(GuardError, match=r"argument 'input' dim 0 was compiled for size 4 .*got shape \(8, 16\)"):
        fast(torch.randn(8, 16))                                      # the call: the export's guards say it first
    for call in (fast.run,):                                          # graph inputs: the signature check
        with pytest.raises(SignatureError, match=r"input %\w+ \(#1 of 1\) expects f32\[4,16\], got f32\[8,16\]: "
                                                 r"dim 0 must be 4"):
            call(torch.randn(8, 16))                                  # ran silently before
        with pytest.raises(SignatureError, match=r"expects f32\[4,16\], got f32\[4,17\]: dim 1 must be 16"):
            call(torch.randn(4, 17))                                  # a raw matmul error before
        with pytest.raises(SignatureError, match=r"got i64\[4,16\]: dtype must be f32"):
            call(torch.ones(4, 16, dtype=torch.int64))
        with pytest.raises(SignatureError, match=r"got f32\[16\]: has rank 1, not 2"):
            call(torch.randn(16))


def test_dynamic_dims_vary_and_stay_consistent():
    g = ir.Graph()
    a = g.add_input("a", TensorType("f32", ("b", 4)))
    c = g.add_input("c", TensorType("f32", ("b", 4)))
    g.set_outputs([g.op("add", a, c)])
    fast = slimgraph.optimize(g, target="torch")
    for n in (1, 3, 7):
        assert fast.run(torch.ones(n, 4), torch.ones(n, 4))[0].shape == (n, 4)
    with pytest.raises(SignatureError, match=r"input %c \(#2 of 2\) expects f32\[b,4\], got f32\[3,4\]: "
                                             r"dim 0 \(b\) is 3 but another input bound b=2"):
        fast.run(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(SignatureError, match=r"takes 2 input\(s\) \(%a: f32\[b,4\], %c: f32\[b,4\]\), got 1"):
        fast.run(torch.ones(2, 4))
    with pytest.raises(SignatureError, match=r"input %a \(#1 of 2\) expects f32\[b,4\], got a list"):
        fast.run([1.0], torch.ones(2, 4))


def test_derived_dims_are_checked():
    g = ir.Graph()
    x = g.add_input("x", TensorType("f32", ("n", 4)))
    y = g.add_input("y", TensorType("f32", ("2*n", 4)))
    check = InputCheck(g.inputs)
    check([torch.ones(3, 4), torch.ones(6, 4)])
    with pytest.raises(SignatureError, match=r"input %y \(#2 of 2\) expects f32\[2\*n,4\], got f32\[5,4\]: "
                                             r"dim 0 must be 2\*n = 6"):
        check([torch.ones(3, 4), torch.ones(5, 4)])


def test_reloaded_artifact_checks_too(tmp_path):
    _, fast = mlp_compiled_for_4x16()
    fast.save(tmp_path / "m.sg")
    again = slimgraph.load(tmp_path / "m.sg")
    with pytest.raises(SignatureError, match=r"expects f32\[4,16\], got f32\[8,16\]"):
        again.run(torch.randn(8, 16))
    with pytest.raises(GuardError, match=r"compiled for size 4"):
        again(torch.randn(8, 16))


TARGETS = ["reference", "torch"] + (["cpu"] if __import__("importlib").util.find_spec("tvm") else [])
QEMB = "canonicalize,quantize-weights{bits=8,group=32,zero_point=float,include=[lm_head.weight]},fuse-dequant-matmul"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("pipeline", [None, QEMB], ids=["float", "qembedding"])
def test_token_ids_outside_the_vocabulary_are_refused_on_every_target(target, pipeline, tmp_path, monkeypatch):
    """An id outside 0..vocab-1 indexes past the embedding table: the cpu target clipped it silently (TVM's take),
    the reference and torch targets read the last row for -1 through a quantized table (python indexing) and
    failed deep in torch otherwise. Every call path refuses it, naming the input, the id and the table."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path))
    from tiny_lm import tiny_llama
    model = tiny_llama(tie_word_embeddings=True)
    fast = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target=target, pipeline=pipeline)
    assert ("qembedding" in fast.graph.op_counts()) == (pipeline is not None)
    for bad, shown in ((96, "96"), (-1, "-1"), (10**9, "1000000000")):
        ids = torch.tensor([[5, bad, 7]])
        match = rf"%input_ids .*holds {shown}, outside 0\.\.95: .*@lm_head\.weight.* 96 rows"
        with pytest.raises(SignatureError, match=match):
            fast(ids)
        with pytest.raises(SignatureError, match=match):
            fast.generate(ids, 3)
        dec = fast.decoder()
        with pytest.raises(SignatureError, match=match):
            dec.prefill(ids)
        dec.prefill(torch.tensor([[5, 6]]))
        with pytest.raises(SignatureError, match=match):
            dec.step(torch.tensor([bad]))
        with pytest.raises(SignatureError, match=match):
            dec.verify(torch.tensor([[5, bad]]))
    assert fast.generate(torch.tensor([[0, 95]]), 2).shape == (1, 4)      # the ends of the range run


@pytest.mark.parametrize("target", TARGETS)
def test_positions_past_a_learned_position_table_are_refused(target, tmp_path, monkeypatch):
    """GPT-2 style learned positions (a [max_positions, d] table indexed by position_ids): decoding past the table
    read out of bounds on the cpu target (silently) and failed deep in torch elsewhere. generate() refuses a
    prompt + max_new_tokens that does not fit before decoding, naming the limit; a decoder call past it is refused
    by the input check."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path))
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "frontends"))
    from hf_tiny import build
    model, _ = build("gpt2")
    limit = model.config.max_position_embeddings
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(0))
    fast = slimgraph.optimize(model, (ids,), target=target)
    # the last new token needs no position (it is read off the logits of the one before)
    assert fast.generate(ids, limit - 9).shape == (1, limit + 1)          # positions 0..limit-1: the whole table
    assert fast.generate(ids, limit - 9, lookup=4).shape == (1, limit + 1)
    with pytest.raises(slimgraph.generate.GenerateError,
                       match=rf"10 prompt tokens \+ max_new_tokens {limit - 8} = {limit + 2} tokens need positions "
                             rf"up to {limit}, .*{limit} learned positions \(@transformer\.wpe\.weight.*"
                             rf"max_new_tokens <= {limit - 9}"):
        fast.generate(ids, limit - 8)
    dec = fast.decoder()
    out = dec.prefill(torch.randint(0, 96, (1, limit)))
    with pytest.raises(SignatureError, match=rf"%position_ids .*holds {limit}, outside 0\.\.{limit - 1}"):
        dec.step(out["logits"][:, -1].argmax(-1))
