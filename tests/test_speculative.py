"""Draft heads end to end on a tiny random Llama: self-distillation (deterministic, improves the heads,
kept by save/load) and speculative decoding (chain, tree) token-identical to plain greedy decoding."""
import pytest
import torch

import slimgraph
from slimgraph.draft import DraftTrainingError
from slimgraph.generate import GenerateError, generate

transformers = pytest.importorskip("transformers")
from tiny_lm import tiny_llama  # noqa: E402
VOCAB = 96




def compile_(target, heads=3, pipeline="canonicalize,"):
    return slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target=target,
                              pipeline=f"{pipeline}insert-draft-heads{{num_heads={heads}}}")


def prompts(n, length=8, seed=1):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def randomize_heads(compiled, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for name, w in compiled.graph.weights.items():
        if name.startswith("draft_heads."):
            w.tensor = torch.randn(w.type.shape, generator=g) * scale
    slimgraph.draft.rebuild_runner(compiled)


@pytest.fixture(scope="module", params=["reference", "torch"])
def random_heads(request):
    c = compile_(request.param)
    randomize_heads(c)
    return c


@pytest.fixture(scope="module")
def trained():
    c = compile_("torch", heads=3)
    report = slimgraph.train_draft_heads(c, prompts=prompts(24, seed=5), new_tokens=40, steps=150,
                                         time_budget_s=None, lr=3e-3, seed=0, progress=False)
    return c, report


def check_identical(c, ps, new=24, **kw):
    acc = []
    for p in ps:
        want = generate(c, p[None], new, speculative=False)
        for mode in ("chain", "tree"):
            got = generate(c, p[None], new, speculative=mode, **kw)
            assert torch.equal(got, want), (mode, p)
            st = c.last_generate_stats
            assert st.speculative == mode and st.new_tokens == new and st.verifies >= 1
            assert 1.0 <= st.mean_acceptance <= 1 + 3      # at most the bonus + all 3 heads per verify
            acc.append(st.mean_acceptance)
    return acc


def test_speculative_output_equals_plain_greedy_with_random_heads(random_heads):
    check_identical(random_heads, prompts(3))


def test_training_is_deterministic_improves_the_heads_and_decoding_stays_identical(trained):
    c, report = trained
    assert report.steps == 150 and report.heads == 3 and report.positions > 0
    assert sum(report.heldout_top1) > sum(report.heldout_top1_before) + 0.1
    assert report.loss[-1] < report.loss[0]
    acc = check_identical(c, prompts(3, seed=9))       # prompts not trained on
    assert sum(acc) / len(acc) > 1.2                   # trained heads get drafts accepted
    again = compile_("torch", heads=3)
    slimgraph.train_draft_heads(again, prompts=prompts(24, seed=5), new_tokens=40, steps=150,
                                time_budget_s=None, lr=3e-3, seed=0, progress=False)
    for i in range(3):
        name = f"draft_heads.{i}.weight"
        assert torch.equal(again.graph.weights[name].tensor, c.graph.weights[name].tensor)
        assert c.graph.weights[name].tensor.abs().max() > 0


def test_trained_heads_survive_an_artifact_round_trip(trained, tmp_path):
    c, _ = trained
    c.save(tmp_path / "m.sg")
    back = slimgraph.load(tmp_path / "m.sg")
    for i in range(3):
        name = f"draft_heads.{i}.weight"
        assert torch.equal(back.graph.weights[name].tensor, c.graph.weights[name].tensor)
    p = prompts(1, seed=11)
    assert torch.equal(generate(back, p, 30, speculative="tree"), generate(c, p, 30, speculative="tree"))
    assert back.last_generate_stats.verifies == c.last_generate_stats.verifies


def test_int4_base_with_float_heads_decodes_identically():
    c = compile_("torch", heads=2, pipeline="quantize-weights{bits=4,group=32},fuse-dequant-matmul,")
    randomize_heads(c)
    check_identical(c, prompts(2, seed=3), new=24)


def test_eos_and_max_new_tokens_match_plain_decoding(random_heads):
    c = random_heads
    p = prompts(1, seed=4)
    plain = generate(c, p, 20, speculative=False)
    eos = int(plain[0, 8 + 10])          # a token the greedy output produces: generation stops there
    want = generate(c, p, 20, speculative=False, eos_token_id=eos)
    for mode in ("chain", "tree"):
        assert torch.equal(generate(c, p, 20, speculative=mode, eos_token_id=eos), want)
        for n in (0, 1, 2, 7):
            assert torch.equal(generate(c, p, n, speculative=mode), plain[:, :8 + n])


def test_auto_mode_uses_the_heads_for_greedy_batch_1_only(random_heads):
    c = random_heads
    generate(c, prompts(1), 10)
    assert c.last_generate_stats.speculative == "chain"
    generate(c, prompts(2), 10)
    assert c.last_generate_stats.speculative is None


def test_clear_errors():
    plain = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="reference")
    with pytest.raises(GenerateError, match="needs draft heads"):
        generate(plain, prompts(1), 4, speculative=True)
    with pytest.raises(DraftTrainingError, match="no draft heads"):
        slimgraph.train_draft_heads(plain, prompts=prompts(2))
    c = compile_("reference", heads=2)
    with pytest.raises(GenerateError, match=r"depth 3; this graph has 2 draft heads"):
        generate(c, prompts(1), 4, speculative="tree", tree=[(0,), (0, 0), (0, 0, 0)])
    with pytest.raises(GenerateError, match=r"parent \(1,\) is not in the tree"):
        generate(c, prompts(1), 4, speculative="tree", tree=[(0,), (1, 0)])
    with pytest.raises(GenerateError, match="batch 1"):
        generate(c, prompts(2), 4, speculative=True)
    with pytest.raises(GenerateError, match="greedy only"):
        generate(c, prompts(1), 4, speculative="chain", do_sample=True)
    with pytest.raises(GenerateError, match="speculative='beam'"):
        generate(c, prompts(1), 4, speculative="beam")


@pytest.mark.slow
@pytest.mark.real_model
def test_speculative_smollm2_example():
    import os
    import subprocess
    import sys
    from pathlib import Path
    from slimgraph import zoo
    if not zoo.available("smollm2-135m"):
        (pytest.fail if os.environ.get("CI") else pytest.skip)(zoo.MODELS["smollm2-135m"].install)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "examples" / "speculative_smollm2.py"), "--train-s", "10"],
                       capture_output=True, text=True, cwd=root, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "chain: same tokens as greedy: True" in p.stdout and "tree: same tokens as greedy: True" in p.stdout
