"""Progress bars (ir/progress.py): one rule set for every long step, and `--quiet` turns them off."""
import pytest
import torch

from slimgraph.ir import progress


def test_quiet_environment_silences_even_forced_bars(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    b = progress.bar(10, "x", enabled=True)
    assert not hasattr(b, "n")          # the no-op bar, not tqdm
    with b:
        b.update(3)


def test_bars_follow_the_terminal_unless_forced(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    with progress.bar(10, "auto") as b:     # pytest captures stderr: not a terminal -> disabled
        assert b.disable
    with progress.bar(10, "forced", enabled=True, delay=0) as b:
        assert not b.disable
        b.update(10)
    assert not hasattr(progress.bar(10, "off", enabled=False), "n")


@pytest.mark.parametrize("argv", [["--quiet", "ops"], ["ops", "-q"]])
def test_cli_quiet_anywhere(argv, monkeypatch, capsys):
    from slimgraph.cli import main
    monkeypatch.setenv(progress.ENV, "1")   # recorded, so the test leaves the environment as it was
    assert not progress.quiet()
    assert main(argv) == 0
    import os
    assert os.environ.get(progress.ENV) == "0" and progress.quiet()


def test_onnx_export_counts_weights_and_nodes(monkeypatch):
    pytest.importorskip("onnx")
    from slimgraph import ir
    from slimgraph.codegen.onnx_export import export_onnx
    from slimgraph.ir import TensorType
    seen = []
    real = progress.bar
    monkeypatch.setattr(progress, "bar", lambda total, desc, *a, **k: seen.append((desc, total)) or real(total, desc, *a, **k))
    g = ir.Graph("m")
    x = g.add_input("x", TensorType("f32", [2, 8]))
    y = g.op("relu", g.op("linear", x, g.add_weight("w", torch.randn(4, 8))))
    g.set_outputs([y])
    export_onnx(g)
    assert seen == [("onnx export", len(g.weights) + len(g.nodes))]


def test_training_bars_follow_the_terminal_rule(monkeypatch):
    """train_draft_heads and distill_attention show their bars by the same rules: not when stderr is not a
    terminal (a log file, CI, pytest's capture), however many steps they run."""
    from slimgraph import draft, linear_attention
    monkeypatch.delenv(progress.ENV, raising=False)
    for bar in (draft._bar(10, "draft heads", True), linear_attention._bar(10, "attention", "step", True)):
        assert bar is None or bar.disable
