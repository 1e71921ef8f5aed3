"""Guards: a compiled model refuses a call that differs from what its export specialized on
(non-tensor arguments, static or size-1 dims, dtypes), naming the argument and the fix; the guards
survive save/load. HF encoders keep a dynamic batch from a batch-1 example."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import slimgraph
from slimgraph.guards import GuardError

sys.path.insert(0, str(Path(__file__).resolve().parent / "frontends"))


class Options(nn.Module):
    def forward(self, x, flag: bool = True, n: int = 2, mode: str = "sum", *, scale: float = 2.0):
        y = x * scale if flag else x[:1]
        y = y.repeat(n, 1)
        return y.sum(0) if mode == "sum" else y.amax(0)


@pytest.fixture(scope="module")
def compiled():
    x = torch.randn(3, 4)
    return slimgraph.optimize(Options(), (x, False, 3, "max"), example_kwargs={"scale": 0.5}), x


@pytest.mark.parametrize("call,name", [
    (dict(args=(True, 3, "max"), kwargs={"scale": 0.5}), "flag"),
    (dict(args=(False, 2, "max"), kwargs={"scale": 0.5}), "n"),
    (dict(args=(False, 3, "sum"), kwargs={"scale": 0.5}), "mode"),
    (dict(args=(False, 3, "max"), kwargs={"scale": 1.5}), "scale"),
])
def test_each_non_tensor_argument_is_guarded(compiled, call, name):
    fast, x = compiled
    with pytest.raises(GuardError, match=rf"argument '{name}' was .* when the model was compiled.*Compile again"):
        fast(x, *call["args"], **call["kwargs"])


def test_same_values_run_and_match(compiled):
    fast, x = compiled
    m = Options()
    assert torch.equal(fast(x, False, 3, "max", scale=0.5), m(x, False, 3, "max", scale=0.5))


def test_dims_and_dtypes_are_guarded_with_the_fix(compiled):
    fast, x = compiled
    with pytest.raises(GuardError, match=r"argument 'x' dim 0 was compiled for size 3 .*dynamic_shapes="):
        fast(torch.randn(5, 4), False, 3, "max", scale=0.5)
    with pytest.raises(GuardError, match=r"argument 'x' was compiled for dtype float32, got torch.float64"):
        fast(x.double(), False, 3, "max", scale=0.5)
    one = slimgraph.optimize(nn.Linear(4, 2), (torch.randn(1, 4),))
    with pytest.raises(GuardError, match=r"size 1 \(the example's size: torch.export fixes dims of size 0 or 1\)"):
        one(torch.randn(2, 4))


def test_a_dynamic_dim_from_a_size_1_example():
    """dynamic_shapes on a dim whose example size is 1 works (export traces a size-2 copy)."""
    from torch.export import Dim
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    for spec in ({"input": {0: Dim("batch")}}, ({0: Dim("batch")},)):
        fast = slimgraph.optimize(m, (torch.randn(1, 4),), dynamic_shapes=spec)
        assert str(fast.graph.inputs[0].type) == "f32[batch,4]"
        x = torch.randn(5, 4)
        torch.testing.assert_close(fast(x), m(x))


def test_guards_survive_save_and_load(compiled, tmp_path):
    fast, x = compiled
    fast.save(tmp_path / "m.sg")
    loaded = slimgraph.load(tmp_path / "m.sg")
    assert torch.equal(loaded(x, False, 3, "max", scale=0.5), fast(x, False, 3, "max", scale=0.5))
    with pytest.raises(GuardError, match="argument 'flag'"):
        loaded(x, True, 3, "max", scale=0.5)


def test_hf_encoder_keeps_a_dynamic_batch_from_a_batch_1_example():
    import hf_tiny
    model, _ = hf_tiny.build("bert")
    one = hf_tiny.inputs("bert", batch=1)
    fast = slimgraph.optimize(model, example_kwargs=one, target="torch")
    assert str(fast.graph.inputs[0].type) == "i64[batch,seq]"
    for call in (one, hf_tiny.inputs("bert", batch=3, seq=9, seed=3), hf_tiny.inputs("bert", batch=2, seq=1)):
        with torch.no_grad():
            want = model(**call).last_hidden_state
        assert (fast(**call).last_hidden_state - want).abs().max() <= 1e-5


def test_hf_encoder_from_a_batch_1_length_1_example_keeps_both_dims():
    import hf_tiny
    model, _ = hf_tiny.build("bert")
    fast = slimgraph.optimize(model, example_kwargs=hf_tiny.inputs("bert", batch=1, seq=1), target="torch")
    assert str(fast.graph.inputs[0].type) == "i64[batch,seq]"
    call = hf_tiny.inputs("bert", batch=3, seq=6, seed=4)
    with torch.no_grad():
        want = model(**call).last_hidden_state
    assert (fast(**call).last_hidden_state - want).abs().max() <= 1e-5


def test_gptq_calibration_with_another_batch_than_the_example():
    import hf_tiny
    model, _ = hf_tiny.build("bert")
    one = hf_tiny.inputs("bert", batch=1)
    calib = hf_tiny.inputs("bert", batch=4, seq=7, seed=9)
    ids, mask = calib["input_ids"], calib["attention_mask"]
    fast = slimgraph.optimize(model, example_kwargs=one, target="torch",
                              pipeline="quantize-weights{bits=8,group=0,method=gptq}",
                              calibration=(ids, mask, torch.zeros_like(ids)))
    stats = next(p for p in fast.report.passes if p["name"] == "quantize-weights")["stats"]
    assert stats["quantized"] > 0
    with torch.no_grad():
        want = model(**calib).last_hidden_state
    assert (fast(**calib).last_hidden_state - want).abs().max() < 0.1
