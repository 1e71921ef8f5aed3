"""Pass time vs graph size: canonicalize + quantize-weights (RTN) on random Llama-shaped models.

    python benchmarks/bench_pass_scaling.py                 # 2, 8, 24 layers, hidden 2048
    python benchmarks/bench_pass_scaling.py --layers 2 8 --repeats 1

Each model is a transformers `LlamaForCausalLM` with random weights (seed 0): hidden 2048, 16 query
heads / 4 KV heads, a small MLP (intermediate 256) and vocabulary (256) so that 24 layers fit in
memory; only the node count matters here. The model is imported once per size (not timed); each
repeat runs `canonicalize` then `quantize-weights{bits=4,group=64}` (RTN) on a fresh copy of the
graph, with the verifier off, and the fastest repeat is reported. The figure of merit is seconds per
node of the imported graph: linear scaling keeps it flat across sizes (the must-show: within 2x).
RTN's arithmetic on the weights is proportional to the number of layers too, so it does not
bend the curve; the `canonicalize` column is graph work alone.
"""
from __future__ import annotations
import argparse
import platform
import time


def build(layers: int, hidden: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from slimgraph.frontends.torch_export import import_module
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=4, vocab_size=256,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False).logits

    ids = torch.randint(0, 256, (1, 8))
    return import_module(Logits(model), (ids,)).graph


def run_once(graph):
    from slimgraph.passes.manager import PassManager
    g = graph.copy()
    t0 = time.perf_counter()
    canon = PassManager("canonicalize", verify=False, progress=False).run(g)
    t1 = time.perf_counter()
    PassManager("quantize-weights{bits=4,group=64}", verify=False, progress=False).run(g)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, canon


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 8, 24])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import torch
    import transformers
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} torch threads, {platform.machine()}")
    rows = []
    for layers in args.layers:
        t0 = time.perf_counter()
        graph = build(layers, args.hidden)
        imported = time.perf_counter() - t0
        nodes = len(graph.nodes)
        best = min((run_once(graph) for _ in range(args.repeats)), key=lambda r: r[0] + r[1])
        canon, quant, _ = best
        rows.append((layers, nodes, canon, quant))
        print(f"layers={layers:3d} nodes={nodes:5d} import={imported:6.1f}s canonicalize={canon * 1e3:8.1f}ms "
              f"quantize={quant * 1e3:8.1f}ms total/node={(canon + quant) / nodes * 1e6:7.1f}us "
              f"canonicalize/node={canon / nodes * 1e6:6.1f}us", flush=True)
        del graph
    per_node = [(c + q) / n for _, n, c, q in rows]
    canon_node = [c / n for _, n, c, _ in rows]
    print("\n| layers | nodes | canonicalize ms | quantize-weights (RTN) ms | total us/node | canonicalize us/node |")
    print("|---|---|---|---|---|---|")
    for (layers, nodes, c, q), pn, cn in zip(rows, per_node, canon_node):
        print(f"| {layers} | {nodes} | {c * 1e3:.1f} | {q * 1e3:.1f} | {pn * 1e6:.1f} | {cn * 1e6:.1f} |")
    print(f"\nmax/min time per node: total {max(per_node) / min(per_node):.2f}x, "
          f"canonicalize {max(canon_node) / min(canon_node):.2f}x (must-show: within 2x)")


if __name__ == "__main__":
    main()
