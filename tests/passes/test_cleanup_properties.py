"""Property tests: every cleanup pass keeps random graphs valid, preserves interpreter outputs,
and is idempotent (a second run changes nothing)."""
import pytest
from hypothesis import HealthCheck, given, settings

from strategies import graphs

from slimgraph.ir import print_graph, run, verify
from slimgraph.passes import PassManager, all_passes

CLEANUP = ["dce", "cse", "fold-constants", "canonicalize"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_cleanup_passes_are_registered():
    assert set(CLEANUP) | {"verify"} <= set(all_passes())


@pytest.mark.parametrize("spec", CLEANUP)
@SETTINGS
@given(case=graphs(max_ops=12))
def test_pass_preserves_outputs_and_is_idempotent(spec, case):
    g, inputs = case
    PassManager(spec, verify="numerics", example_inputs=inputs, atol=1e-5, rtol=1e-4).run(g)
    after = print_graph(g)
    rep = PassManager(spec, verify=True).run(g)
    assert not rep[0].changed, f"{spec} is not idempotent: {rep[0].stats}\n{after}"
    assert print_graph(g) == after


@SETTINGS
@given(case=graphs(max_ops=14))
def test_full_cleanup_pipeline_shrinks_and_preserves(case):
    g, inputs = case
    n = len(g.nodes)
    PassManager("canonicalize,cse,fold-constants,dce", verify="numerics", example_inputs=inputs,
                atol=1e-5, rtol=1e-4).run(g)
    verify(g)
    assert len(g.nodes) <= n
    outs = {id(v) for v in g.outputs}
    assert all(any(o.uses or id(o) in outs for o in m.outputs) for m in g.nodes), "dead node left behind"
    run(g, *inputs)
