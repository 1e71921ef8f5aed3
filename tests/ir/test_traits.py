"""Op traits: declared once with each op, from a fixed vocabulary."""
import pytest
import torch

from slimgraph.ir import compose
from slimgraph.ir.graph import Graph
from slimgraph.ir.interpreter import run
from slimgraph.ir.opset import nn as nn_ref
from slimgraph.ir.registry import TRAITS, all_ops, get_op, ops_with, register_op
from slimgraph.ir.types import TensorType


def test_every_trait_is_from_the_vocabulary_and_ops_are_annotated():
    ops = all_ops()
    for name, d in ops.items():
        assert d.traits <= set(TRAITS), name
    assert {"add", "mul", "maximum", "eq", "logical_and"} <= ops_with("commutative")
    assert not {"sub", "div", "pow", "lt", "where"} & ops_with("commutative")
    assert {"relu", "add", "cast", "where", "gelu", "isinf"} <= ops_with("elementwise")
    assert {"sum", "mean", "amax", "argmax", "var"} == ops_with("reduction") - {"amin", "argmin", "prod"}
    assert {"reshape", "permute", "slice", "concat", "split", "tile"} <= ops_with("view")
    assert {"qlinear", "dequantize", "qembedding", "linear", "embedding"} <= ops_with("reads_weight")
    assert {"constant", "full", "arange"} <= ops_with("generator")
    assert {"cache_append", "cache_window"} <= ops_with("state")
    # no op is both arithmetic-free and elementwise-arithmetic or a reduction
    assert not ops_with("view") & (ops_with("elementwise") | ops_with("reduction"))
    assert get_op("add").has("commutative") and not get_op("matmul").traits


def test_generators_take_no_tensor_inputs_and_commutative_ops_two():
    for name in ops_with("generator"):
        assert get_op(name).inputs == (), name
    for name in ops_with("commutative"):
        assert len(get_op(name).inputs) == 2, name


@pytest.mark.parametrize("name", sorted(n for n in all_ops() if "commutative" in all_ops()[n].traits))
def test_commutative_ops_commute(name):
    d = get_op(name)
    g = torch.Generator().manual_seed(0)
    if name.startswith(("bitwise", "logical")):
        a, b = torch.randint(0, 4, (5,), generator=g), torch.randint(0, 4, (5,), generator=g)
    else:
        a, b = torch.randn(5, generator=g), torch.randn(5, generator=g)
    assert torch.equal(d.run(a, b), d.run(b, a))


def test_unknown_trait_is_an_error():
    with pytest.raises(ValueError, match="unknown trait.*'elementwize'.*valid: elementwise"):
        register_op("never_declared", inputs="x", infer=lambda ts, a: ts[0], traits=("elementwize",))
    with pytest.raises(ValueError, match="needs exactly two inputs"):
        register_op("never_declared", inputs="x", infer=lambda ts, a: ts[0], traits="commutative")
    with pytest.raises(ValueError, match="unknown op trait"):
        get_op("add").has("fast")
    with pytest.raises(ValueError, match="unknown op trait"):
        ops_with("fast")
    assert "never_declared" not in all_ops()


def test_reference_helpers_match_the_ir_subgraphs():
    assert torch.equal(nn_ref.causal_keep(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    g = Graph()
    k = g.add_input("k", TensorType("f32", (1, 2, 3, 4)))
    keep = compose.causal_keep(g.op, 2, 4, diagonal=2)
    g.set_outputs([keep, compose.repeat_heads(g.op, k, 3)])
    kt = torch.randn(1, 2, 3, 4)
    got_keep, got_rep = run(g, kt)
    assert torch.equal(got_keep, nn_ref.causal_keep(2, 4))
    assert torch.equal(got_rep, nn_ref.repeat_kv(kt, 3))
    m = torch.zeros(2, 4)
    assert torch.equal(nn_ref.and_mask(m, nn_ref.causal_keep(2, 4))[0], torch.tensor([0., 0., 0., -float("inf")]))
