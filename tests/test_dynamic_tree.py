"""Dynamic, cost-aware speculative trees (slimgraph/dynamic_tree.py, `generate(..., speculative="tree",
tree="dynamic")`): the verify's size is chosen per step from the drafter's confidences and the measured cost
of a verify, and the output is always plain greedy decoding's."""
import pytest
import torch

from slimgraph.dynamic_tree import Policy, Scored, VerifyClock, medusa_scored
from slimgraph.generate import GenerateError, generate

transformers = pytest.importorskip("transformers")
from test_speculative import compile_, compile_eagle, prompts, randomize_heads, repetitive_prompt  # noqa: E402
from tiny_lm import tiny_llama  # noqa: E402


def clock(seconds: dict) -> VerifyClock:
    c = VerifyClock()
    for m, s in seconds.items():
        c.observe(m, s)
    return c


def test_verify_clock_is_the_median_of_timings_and_scales_its_prior_for_untimed_counts():
    c = VerifyClock()
    assert c(1) == 1.0 and c(5) == 2.0                     # no timing yet: the prior 1 + 0.25 (m - 1), in steps
    for s in (0.5, 0.010, 0.011, 0.012):                   # a slow first call (warm-up) does not stick
        c.observe(1, s)
    assert c(1) == pytest.approx(0.0115)
    assert c(5) == pytest.approx(0.0115 * 2.0)             # untimed: the prior scaled by the timed ones
    c.observe(5, 0.05)
    assert c(5) == 0.05


def test_policy_keeps_the_nodes_that_pay_for_their_rows():
    s = Scored()
    a = s.add(0, 11, 0.9)         # node 1: depth 1
    s.add(0, 12, 0.05)            # node 2: depth 1, unlikely
    b = s.add(a, 13, 0.8)         # node 3: depth 2 under node 1
    s.add(b, 14, 0.1)             # node 4: depth 3
    # rows are cheap up to 3, then each costs a full step: keep 1 -> 3, not the unlikely ones
    p = Policy(clock({1: 1.0, 2: 1.05, 3: 1.1, 4: 2.1, 5: 3.1}), max_rows=64)
    parents, tokens, info = p.select(s, [], 0, draft_s=0.0, room=100)
    assert tokens == [11, 13] and parents == [0, 1]
    # expensive rows: nothing is worth verifying; plain decoding (one row) is the best rate
    p = Policy(clock({1: 1.0, 2: 2.0, 3: 3.0}), max_rows=64)
    assert p.select(s, [], 0, 0.0, 100)[1] == []
    # free rows: everything is kept, parents before children
    p = Policy(clock({m: 1.0 for m in range(1, 8)}), max_rows=64)
    parents, tokens, _ = p.select(s, [], 0, 0.0, 100)
    assert sorted(tokens) == [11, 12, 13, 14] and all(parents[i] < i + 1 for i in range(len(parents)))
    # room: a verify never drafts past the tokens still allowed
    assert p.select(s, [], 0, 0.0, room=2)[1] == [11, 12]


def test_policy_merges_a_lookup_chain_and_learns_from_the_verify():
    s = Scored()
    s.add(0, 11, 0.3)
    p = Policy(clock({m: 1.0 for m in range(1, 8)}), max_rows=64)
    parents, tokens, info = p.select(s, [11, 20, 21], 3, 0.0, 100)
    assert tokens == [11, 20, 21] and parents == [0, 1, 2]          # the shared first token is one node
    assert info[0][2] == pytest.approx(max(0.3 * p.calibration(1), p.lookup_value(3, 0)))
    before = p.lookup_value(3, 1)
    p.learn(info, accepted={1, 2, 3}, n_match=3)     # all accepted: lookup after 3-gram trusted more
    assert p.lookup_value(3, 1) > before and p.calibration(1) > 1.0
    p.learn(info, accepted=set(), n_match=3)
    p.learn(info, accepted=set(), n_match=3)
    assert p.calibration(1) < 1.0


def test_medusa_scores_are_products_of_head_probabilities():
    rows = [torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])]
    s = medusa_scored(rows, depth=2, width=1, topk=2, floor=0.0)
    p0, p1 = torch.softmax(rows[0], -1), torch.softmax(rows[1], -1)
    assert s.token[:2] == [0, 1] and s.value[0] == pytest.approx(float(p0[0]))
    assert s.parent[2:] == [1, 1] and s.token[2] == 1                # width 1: only the best node grows
    assert s.value[2] == pytest.approx(float(p0[0] * p1[1]))


@pytest.mark.parametrize("target", ["reference", "torch"])
@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_dynamic_trees_keep_the_greedy_output(kind, target):
    c = compile_eagle(target) if kind == "eagle" else compile_(target)
    if kind == "medusa":
        randomize_heads(c)
    for p in [repetitive_prompt(), *prompts(2)[:, None]]:
        want = generate(c, p, 24, speculative=False)
        for lookup in (0, 5):
            got = generate(c, p, 24, speculative="tree", tree="dynamic", lookup=lookup)
            assert torch.equal(got, want), (kind, target, lookup)
            st = c.last_generate_stats
            assert st.new_tokens == 24 and 1.0 <= st.mean_acceptance
    assert c._dynamic_tree.clock.seconds                             # every verify was timed into the model's clock
    from slimgraph.draft import rebuild_runner
    rebuild_runner(c)                                                # new weights or runner: what was learned goes
    assert "_dynamic_tree" not in c.__dict__


def test_lookup_alone_drafts_a_dynamic_tree_and_keeps_the_greedy_output():
    import slimgraph
    c = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="torch",
                           pipeline="canonicalize")
    p = repetitive_prompt()
    want = generate(c, p, 32)
    got = generate(c, p, 32, speculative="tree", tree="dynamic", lookup=6)
    assert torch.equal(got, want) and c.last_generate_stats.speculative == "lookup"
    assert c.last_generate_stats.mean_acceptance > 1.5


def test_dynamic_tree_errors_name_the_fix():
    c = compile_eagle("reference")
    with pytest.raises(GenerateError, match="'dynamic'"):
        generate(c, prompts(1), 4, speculative="tree", tree="dynamo")
    with pytest.raises(GenerateError, match="chain"):
        generate(c, prompts(1), 4, speculative="tree", tree="dynamic", do_sample=True)


def test_tree_and_lookup_arguments_that_cannot_work_name_the_fix():
    c = compile_("reference")
    p = prompts(1)
    for bad in (["dynamic"], 123, b"dynamic", ("dynamic",)):
        with pytest.raises(GenerateError, match="give 'dynamic' or a list of paths"):
            generate(c, p, 5, tree=bad)
    with pytest.raises(GenerateError, match="lookup=True"):                    # the value given, not a placeholder
        generate(c, p, 5, lookup=True)
    with pytest.raises(GenerateError, match="batch 1, no padding.*drop tree="):
        generate(c, prompts(2), 5, tree="dynamic")


def test_lookup_alone_takes_the_dynamic_tree_however_it_is_asked_for():
    import slimgraph
    c = slimgraph.optimize(tiny_llama(), (torch.zeros(1, 4, dtype=torch.long),), target="reference",
                           pipeline="canonicalize")
    p = repetitive_prompt()
    want = generate(c, p, 12)
    for kw in (dict(tree="dynamic"), dict(speculative="tree"), dict(speculative="tree", tree="dynamic")):
        assert torch.equal(generate(c, p, 12, lookup=3, **kw), want), kw


def test_the_eagle_drafters_tables_follow_a_replaced_lm_head_or_embedding():
    from slimgraph import eagle as E
    from slimgraph.speculative import chain
    g = compile_eagle("reference").graph

    def drafts():
        d = E.EagleDrafter(g, dtype=torch.float32)
        torch.manual_seed(0)
        d.extend(torch.randn(6, 64), torch.arange(6))
        return d.draft_tree(chain(3))
    before = drafts()
    torch.manual_seed(1)
    for n in ("lm_head.weight", "model.embed_tokens.weight"):
        g.weights[n].tensor = torch.randn_like(g.weights[n].tensor)
    after = drafts()
    g.__dict__.pop("_eagle_static")
    assert after == drafts() and after != before                   # the cache was rebuilt, not reused
