"""Inserted trainable components (slimgraph/trainable.py): optimize records them as untrained, the training
functions record that they trained them, `save` warns about untrained ones, and save/load keep the record."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

import slimgraph
from slimgraph.trainable import UntrainedWarning, untrained_components

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def compile_(model, pipeline):
    return slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch", pipeline=pipeline)


def ids(n, rows, seed=0):
    return torch.randint(0, 96, (rows, n), generator=torch.Generator().manual_seed(seed))


def test_linearized_model_is_untrained_until_distilled_and_save_says_so_once(model, tmp_path):
    c = compile_(model, "canonicalize,linearize-attention{window=4}")
    (only,) = untrained_components(c)
    assert "feature maps" in only and "linearize-attention{window=4" in only and "slimgraph.distill_attention" in only
    with pytest.warns(UntrainedWarning) as got:
        c.save(tmp_path / "untrained.sg")
    assert len(got) == 1 and "distill_attention" in str(got[0].message)
    back = slimgraph.load(tmp_path / "untrained.sg")
    assert untrained_components(back) == [only]                  # the record survives save/load
    assert "UNTRAINED: attention feature maps" in str(back.report)

    r = slimgraph.distill_attention(c, ids=ids(24, 3), steps=3, time_budget_s=None, progress=False)
    assert untrained_components(c) == []
    (entry,) = c.report.trained
    assert entry["function"] == "slimgraph.distill_attention" and entry["tokens"] == r.tokens == 2 * 24
    assert entry["steps"] == 3 and "held-out relative MSE" in entry["summary"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the normal train-then-save path: no warning at all
        c.save(tmp_path / "trained.sg")
    back = slimgraph.load(tmp_path / "trained.sg")
    assert untrained_components(back) == [] and "trained attention feature maps" in str(back.report)
    # an untrained artifact loaded, trained and saved again is a trained one
    again = slimgraph.load(tmp_path / "untrained.sg")
    slimgraph.distill_attention(again, ids=ids(24, 3), steps=2, time_budget_s=None, progress=False)
    assert untrained_components(again) == []


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_draft_heads_are_untrained_until_trained(model, kind, tmp_path):
    c = compile_(model, f"canonicalize,insert-draft-heads{{num_heads=2,kind={kind}}}")
    (only,) = untrained_components(c)
    assert "draft heads" in only and "slimgraph.train_draft_heads" in only
    assert ("zero Medusa heads" if kind == "medusa" else "seeded EAGLE layer") in only
    with pytest.warns(UntrainedWarning, match="train_draft_heads"):
        c.save(tmp_path / "untrained.sg")
    slimgraph.train_draft_heads(c, prompts=ids(6, 4), new_tokens=8, steps=3, progress=False)
    assert untrained_components(c) == [] and c.report.trained[0]["function"] == "slimgraph.train_draft_heads"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.save(tmp_path / "trained.sg")
    assert untrained_components(slimgraph.load(tmp_path / "trained.sg")) == []


def test_a_pipeline_without_trainable_passes_records_nothing(model, tmp_path):
    c = compile_(model, "canonicalize,cse,dce")
    assert untrained_components(c) == [] and c.report.untrained == [] and c.report.trained == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedWarning)
        c.save(tmp_path / "plain.sg")


def test_a_report_without_the_record_lists_nothing():
    """Artifacts written before the record existed: their manifest's report has no `untrained` key."""
    assert untrained_components({"target": "torch", "pipeline": "linearize-attention{window=4}"}) == []


@pytest.mark.parametrize("pipeline", ["canonicalize,linearize-attention{window=4}",
                                      "canonicalize,insert-draft-heads{num_heads=2}",
                                      "canonicalize,insert-draft-heads{num_heads=2,kind=eagle}"])
def test_a_training_that_ran_no_update_leaves_the_components_untrained(model, pipeline):
    """A budget spent before the first update (what `compile --train-budget 1e-9` gives each function) leaves
    the initial values in place: the record must still say UNTRAINED, not 'trained in 0 steps'."""
    c = compile_(model, pipeline)
    before = untrained_components(c)
    if "linearize" in pipeline:
        r = slimgraph.distill_attention(c, ids=ids(24, 3), time_budget_s=None, cpu_budget_s=0,
                                         progress=False)
    else:
        r = slimgraph.train_draft_heads(c, prompts=ids(6, 4), new_tokens=8, time_budget_s=None, cpu_budget_s=0,
                                        progress=False)
    assert r.steps == 0
    assert untrained_components(c) == before and c.report.trained == []


def test_training_again_records_the_pass_spec(model):
    """A second training of already-trained components names the pass as optimize ran it (not the bare name)."""
    c = compile_(model, "canonicalize,linearize-attention{window=4}")
    for _ in range(2):
        slimgraph.distill_attention(c, ids=ids(24, 3), steps=2, time_budget_s=None, progress=False)
    assert [e["spec"] for e in c.report.trained] == [c.report.passes[1]["spec"]] * 2
    assert c.report.trained[1]["spec"].startswith("linearize-attention{window=4")
