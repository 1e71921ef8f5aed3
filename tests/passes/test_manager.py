"""PassManager: per-pass records, report rendering, IR dumps, verification, error context and
numerics bisection (a deliberately broken pass must be found)."""
import json

import pytest

from passtest import random_inputs, random_weights

from slimgraph.ir import parse_graph
from slimgraph.passes import (NumericsError, Pass, PassError, PassManager, PassResult, register_pass,
                              run_pipeline)

TEXT = """
graph @main(%x: f32[b,4]) {
  weight @w: f32[4]
  %zero: f32[] = constant() {value=0.0, dtype="f32"}
  %a: f32[b,4] = add(%x, %zero)
  %e1: f32[b,4] = exp(%a)
  %e2: f32[b,4] = exp(%a)
  %s: f32[b,4] = add(%e1, %e2)
  %y: f32[b,4] = add(%s, @w)
  %dead: f32[b,4] = neg(%y)
  return %y
}"""


def graph():
    return parse_graph(TEXT, weights=random_weights(TEXT))


@register_pass("test-break-add")
class BreakAdd(Pass):
    """Deliberately wrong: turns the last `add` into `sub` (same types, different numbers)."""

    def run(self, graph):
        node = [n for n in graph.nodes if n.op == "add"][-1]
        node.op = "sub"
        return PassResult(True, {"broken": 1})


@register_pass("test-corrupt-uses")
class CorruptUses(Pass):
    """Deliberately wrong: leaves a stale use list."""

    def run(self, graph):
        graph.inputs[0].uses.append((graph.nodes[-1], 0))
        return PassResult(True)


@register_pass("test-raise")
class Raise(Pass):
    def run(self, graph):
        raise RuntimeError("boom")


@register_pass("test-no-result")
class NoResult(Pass):
    def run(self, graph):
        return None


def test_report_records_each_pass():
    g = graph()
    rep = PassManager("canonicalize,cse,dce,dce").run(g)
    assert [r.name for r in rep] == ["canonicalize", "cse", "dce", "dce"]
    assert [r.changed for r in rep] == [True, True, True, False]
    assert rep[1].stats == {"merged": 1} and rep[2].stats == {"nodes": 1, "weights": 0}
    assert all(r.seconds >= 0 for r in rep) and rep.seconds == sum(r.seconds for r in rep)
    assert rep.nodes_before == 7 and rep[-1].nodes_after == len(g.nodes) == 3
    table = str(rep)
    assert table.splitlines()[0].split() == ["pass", "time", "ms", "changed", "nodes", "stats"]
    assert "merged=1" in table and "nodes before: 7" in table
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["pipeline"] == "canonicalize,cse,dce,dce" and d["passes"][1]["stats"] == {"merged": 1}


def test_print_ir_after_named_pass(capsys):
    PassManager("canonicalize,cse,dce", print_ir_after="cse").run(graph())
    err = capsys.readouterr().err
    assert err.count("IR after pass") == 1 and "IR after pass 'cse' (#2)" in err
    assert "%s: f32[b,4] = add(%e1, %e1)" in err


def test_print_ir_after_all_from_env(monkeypatch, capsys):
    monkeypatch.setenv("SLIMGRAPH_PRINT_IR_AFTER", "all")
    PassManager("cse,dce").run(graph())
    err = capsys.readouterr().err
    assert "IR after pass 'cse' (#1)" in err and "IR after pass 'dce' (#2)" in err


def test_verify_after_each_pass_names_the_broken_pass():
    with pytest.raises(PassError) as e:
        PassManager("cse,test-corrupt-uses,dce", verify=True).run(graph())
    msg = str(e.value)
    assert "invalid after pass 'test-corrupt-uses' (#2" in msg and "before it: cse" in msg and "stale" in msg
    PassManager("cse,test-corrupt-uses", verify=False).run(graph())  # unchecked: no error


def test_verify_defaults_on_under_pytest(monkeypatch):
    assert PassManager("dce").verify is True
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.delenv("SLIMGRAPH_DEBUG", raising=False)
    assert PassManager("dce").verify is False
    monkeypatch.setenv("SLIMGRAPH_DEBUG", "1")
    assert PassManager("dce").verify is True


def test_pass_exception_is_wrapped_with_context():
    with pytest.raises(PassError) as e:
        PassManager("canonicalize,cse,test-raise,dce").run(graph())
    msg = str(e.value)
    assert "pass 'test-raise' (#3 in pipeline) failed: RuntimeError: boom" in msg
    assert "passes that ran before it: canonicalize,cse" in msg
    assert isinstance(e.value.__cause__, RuntimeError)


def test_pass_must_return_pass_result():
    with pytest.raises(PassError, match="must return PassResult"):
        PassManager("test-no-result").run(graph())


def test_numerics_bisection_finds_the_broken_pass():
    g = graph()
    x = random_inputs(g)
    with pytest.raises(NumericsError) as e:
        PassManager("canonicalize,cse,test-break-add,dce", verify="numerics", example_inputs=x).run(g)
    msg = str(e.value)
    assert "pass 'test-break-add' (#3 in pipeline; before it: canonicalize,cse)" in msg
    assert "output 0 deviates" in msg
    err = float(msg.split("max abs error ")[1].split()[0])
    assert err > 0.1


def test_numerics_records_errors_for_good_passes():
    g = graph()
    rep = run_pipeline(g, "canonicalize,cse,fold-constants,dce", verify="numerics",
                       example_inputs=random_inputs(g))
    assert all(r.max_abs_err is not None and r.max_abs_err <= 1e-5 for r in rep)


def test_numerics_needs_inputs_and_valid_mode():
    with pytest.raises(ValueError, match="needs example_inputs"):
        PassManager("dce", verify="numerics")
    with pytest.raises(ValueError, match="verify="):
        PassManager("dce", verify="yes")


def test_progress_bar_renders_when_forced(capsys):
    PassManager("cse,dce", progress=True).run(graph())
    assert "slimgraph passes" in capsys.readouterr().err


def test_print_ir_after_changed_skips_passes_that_changed_nothing(capsys):
    PassManager("canonicalize,dce,cse,dce", print_ir_after="changed").run(graph())
    err = capsys.readouterr().err
    dumped = [ln.split("'")[1] for ln in err.splitlines() if "IR after pass" in ln]
    assert dumped == ["canonicalize", "dce", "cse"]


def test_reproducer_holds_the_ir_the_failing_pass_received(tmp_path):
    path = tmp_path / "repro.sgir"
    g = graph()
    with pytest.raises(PassError) as e:
        PassManager("canonicalize,cse,test-corrupt-uses,dce", verify=True, reproducer=str(path)).run(g)
    assert f"reproducer (the IR this pass got): {path}" in str(e.value)
    text = path.read_text()
    assert text.startswith("# slimgraph reproducer: pass 'test-corrupt-uses' (#3 of")
    replay = parse_graph(text)  # comment lines are skipped: the file parses as-is
    assert replay.op_counts() == {"exp": 1, "add": 2, "neg": 1}  # after canonicalize+cse, before the bad pass
    with pytest.raises(PassError, match="test-corrupt-uses"):
        PassManager("test-corrupt-uses", verify=True).run(replay)
