"""Optimize SmolLM2-135M-Instruct for the CPU `torch` target, chat with it, and compare it with
transformers: decode speed side by side and perplexity against the original (`make demo`).

    python examples/smollm2_demo.py [--pipeline PIPELINE] [--new-tokens 64]
"""
import argparse
import time

import torch

import slimgraph
from slimgraph import zoo
from slimgraph.generate import TokenClock

QUESTION = "What is the capital of France? Answer in two sentences."


def chat_prompt(tokenizer, question):
    enc = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt")
    return enc["input_ids"] if not isinstance(enc, torch.Tensor) else enc


def perplexity_lines(model, compiled, tokenizer):
    try:
        from slimgraph import evaluate
    except ImportError:
        return ["perplexity: skipped (slimgraph.evaluate is not available in this build)"]
    with torch.inference_mode():
        ref, ours = evaluate.perplexity(model, tokenizer), evaluate.perplexity(compiled, tokenizer)
    return [f"perplexity: transformers {ref:.3f}, slimgraph {ours:.3f} ({(ours / ref - 1) * 100:+.2f}%)"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=None, help="pass pipeline (default: the torch target's)")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    print("loading SmolLM2-135M-Instruct (fp32) ...")
    model, tok = zoo.load("smollm2-135m")
    ids = chat_prompt(tok, QUESTION)
    eos = model.generation_config.eos_token_id

    t0 = time.perf_counter()
    fast = slimgraph.optimize(model, (ids,), target="torch", pipeline=args.pipeline)
    print(f"optimized for the torch target in {time.perf_counter() - t0:.1f} s")
    print(fast.report)

    fast.generate(ids, max_new_tokens=4)  # warm-up, as for transformers below
    out = fast.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=eos)
    ours = fast.last_generate_stats
    print(f"\nQ: {QUESTION}\nA: {tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()}\n")

    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        clock = TokenClock()
        ref = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, streamer=clock)
    same = ref.tolist() == out.tolist()
    print(f"greedy tokens identical to transformers: {same}")
    print(f"decode tokens/s ({ours.new_tokens} tokens): transformers eager {clock.decode_tokens_per_s():.1f}"
          f" | slimgraph torch {ours.decode_tokens_per_s:.1f}")
    for line in perplexity_lines(model, fast, tok):
        print(line)


if __name__ == "__main__":
    main()
