"""Pass contracts (requires/ensures, checked by the manager) and the pass context."""
from dataclasses import dataclass

import pytest
import torch

from slimgraph.ir import Graph, TensorType
from slimgraph.passes import PassContext, PassError, PassManager, PassResult, register_pass, register_property
from slimgraph.passes.base import PASSES, PROPERTIES, Pass, ensured_by


def linear_graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("b", 64)))
    w = g.add_weight("fc.weight", torch.randn(32, 64, generator=torch.Generator().manual_seed(0)))
    g.set_outputs([g.op("relu", g.op("linear", x, w))])
    return g


def test_fuse_before_quantize_is_refused_naming_the_pass_and_the_fix():
    g = linear_graph()
    with pytest.raises(PassError) as e:
        PassManager("fuse-dequant-matmul,quantize-weights{bits=4,group=32}").run(g)
    msg = str(e.value)
    assert "pass 'fuse-dequant-matmul' (#0 in pipeline" in msg and "requires 'quantized'" in msg
    assert "run quantize-weights or select-precision before it" in msg
    assert [n.op for n in g.nodes] == ["linear", "relu"]  # nothing ran


def test_requirement_met_by_an_earlier_pass_or_by_the_graph():
    g = linear_graph()
    rep = PassManager("quantize-weights{bits=4,group=32},fuse-dequant-matmul", verify=True).run(g)
    assert rep[1].stats["fused"] == 1 and [n.op for n in g.nodes] == ["qlinear", "relu"]
    assert g.nodes[0].meta["pass"] == "fuse-dequant-matmul"
    # a graph that already holds dequantize ops satisfies it without quantize-weights in the run
    g = linear_graph()
    PassManager("quantize-weights{bits=4,group=32}").run(g)
    assert PassManager("fuse-dequant-matmul").run(g)[0].changed
    # quantize-weights that selects nothing still ensures it: fuse is then a no-op, not an error
    g = linear_graph()
    ctx = PassContext()
    rep = PassManager("quantize-weights{exclude=[fc.*]},fuse-dequant-matmul").run(g, ctx)
    assert not rep.changed and ctx.ran == ["quantize-weights", "fuse-dequant-matmul"]
    assert {"quantized", "dequant-fused"} <= ctx.ensured
    # a changing pass drops unstable properties ensured before it; stable ones stay
    g = linear_graph()
    ctx = PassContext()
    PassManager("quantize-weights{bits=4,group=32},dce,fuse-dequant-matmul").run(g, ctx)
    assert "no-dead-nodes" not in ctx.ensured and {"quantized", "dequant-fused"} <= ctx.ensured


def test_ensures_are_checked_after_a_changing_pass():
    register_property("test-no-relu", "no relu op", lambda g: not any(n.op == "relu" for n in g.nodes)) \
        if "test-no-relu" not in PROPERTIES else None

    @dataclass
    class Liar(Pass):
        ensures = ("test-no-relu",)

        def run(self, graph):
            graph.op("neg", graph.inputs[0])  # changes the graph, leaves the relu
            return PassResult(True)

    PASSES.pop("test-liar", None)
    register_pass("test-liar")(Liar)
    try:
        assert ensured_by("test-no-relu") == ["test-liar"]
        with pytest.raises(PassError, match=r"'test-liar' \(#0 in pipeline\) declares it ensures 'test-no-relu'"):
            PassManager("test-liar", verify=True).run(linear_graph())
        PassManager("test-liar", verify=False).run(linear_graph())  # unchecked without verify
    finally:
        PASSES.pop("test-liar")


def test_unknown_property_is_an_error_at_registration():
    @dataclass
    class Bad(Pass):
        requires = ("no-such-property",)

        def run(self, graph):
            return PassResult(False)

    with pytest.raises(ValueError, match="unknown property 'no-such-property'"):
        register_pass("test-bad")(Bad)
    assert "test-bad" not in PASSES


def test_calibration_reaches_passes_through_the_context():
    seen = []

    @dataclass
    class Needy(Pass):
        def run(self, graph, ctx):
            seen.append(ctx.calibration)
            return PassResult(False)

    PASSES.pop("test-needy", None)
    register_pass("test-needy")(Needy)
    try:
        ids = torch.zeros(1, 4, dtype=torch.int64)
        PassManager("test-needy,dce").run(linear_graph(), PassContext(calibration=ids))
        assert seen == [ids]
        PassManager("test-needy").run(linear_graph())
        assert seen[-1] is None
    finally:
        PASSES.pop("test-needy")


def test_quantize_weights_gptq_takes_calibration_from_the_context():
    g = linear_graph()
    with pytest.raises(PassError, match="needs calibration data"):
        PassManager("quantize-weights{bits=4,group=32,method=gptq}").run(linear_graph())
    ids = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))  # a batch for the one input
    p = PassManager("quantize-weights{bits=4,group=32,method=gptq}")
    rep = p.run(g, PassContext(calibration=(ids,)))
    assert rep[0].stats["quantized"] == 1 and p.passes[0].calibration is None  # the pass keeps no copy
