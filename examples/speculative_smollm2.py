"""Speculative decoding on SmolLM2-135M with Medusa draft heads trained by self-distillation, and with
prompt lookup (n-gram drafts from the context; no training).

    python examples/speculative_smollm2.py [--train-s 120]
"""
import argparse

import torch

import slimgraph
from slimgraph import zoo

ap = argparse.ArgumentParser()
ap.add_argument("--train-s", type=float, default=120.0)
args = ap.parse_args()

model, tok = zoo.load("smollm2-135m")
fast = slimgraph.optimize(model, (torch.zeros(1, 8, dtype=torch.long),), target="torch",
                          pipeline="canonicalize,cse,dce,insert-draft-heads{num_heads=4}")
# the base model continues prompts from the standard library's docstrings greedily; the heads learn to guess
# its next tokens
print(slimgraph.train_draft_heads(fast, tokenizer=tok, num_prompts=16, new_tokens=64, time_budget_s=args.train_s))

ids = tok("The three most important ideas in computer science are", return_tensors="pt").input_ids
plain = fast.generate(ids, 64, speculative=False)
plain_s = fast.last_generate_stats.decode_s
FIXED = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 0, 0)]      # a Medusa-style tree of top-k ranks
for mode, tree, lookup in (("chain", None, 0), ("tree", FIXED, 0), ("tree", "dynamic", 0), ("tree", "dynamic", 8)):
    # the dynamic tree (the default) verifies only what pays off at this model's measured verify cost
    out = fast.generate(ids, 64, speculative=mode, tree=tree, lookup=lookup)
    st = fast.last_generate_stats
    label = st.speculative + (" (dynamic)" if tree == "dynamic" else " (fixed)" if tree else "")
    print(f"{label}: same tokens as greedy: {torch.equal(out, plain)}, {st.mean_acceptance:.2f} tokens per forward, "
          f"decode {plain_s / st.decode_s:.2f}x plain")
print(tok.decode(out[0]))
