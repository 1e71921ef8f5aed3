"""Pass time vs graph size: canonicalize + quantize-weights (RTN) on random Llama-shaped models.

    python benchmarks/bench_pass_scaling.py                 # 2, 8, 24 layers, hidden 2048
    python benchmarks/bench_pass_scaling.py --layers 2 8 --repeats 1
    python benchmarks/bench_pass_scaling.py --against /tmp/base/.venv/bin/python   # vs another tree

Each model is a transformers `LlamaForCausalLM` with random weights (seed 0): hidden 2048, 16 query
heads / 4 KV heads, a small MLP (intermediate 256) and vocabulary (256) so that 24 layers fit in
memory; only the node count matters here. The model is imported once per size (not timed); each
repeat runs `canonicalize` then `quantize-weights{bits=4,group=64}` (RTN) on a fresh copy of the
graph, with the verifier off (garbage collected before each), the sizes interleaved so that a load
change on a shared machine hits all of them, and the fastest repeat is reported. Times are process
CPU seconds (all threads: `time.process_time`), which other jobs on a shared machine disturb far
less than wall time; wall time is printed beside them. The figure of merit is seconds per
node of the imported graph: linear scaling keeps it flat across sizes (the must-show: within 2x).
RTN's arithmetic on the weights is proportional to the number of layers too, so it does not
bend the curve; the `canonicalize` column is graph work alone.
`--against PYTHON` runs the same measurement under another interpreter (e.g. a venv whose editable
slimgraph is the tree before a change) and this one, alternating (A B A B), and prints both tables.
"""
from __future__ import annotations
import argparse
import gc
import json
import platform
import subprocess
import sys
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
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    PassManager("canonicalize", verify=False, progress=False).run(g)
    c1 = time.process_time()
    PassManager("quantize-weights{bits=4,group=64}", verify=False, progress=False).run(g)
    c2, t2 = time.process_time(), time.perf_counter()
    return c1 - c0, c2 - c1, t2 - t0


def measure(layer_counts, hidden, repeats, log=print):
    graphs = {}
    for layers in layer_counts:
        t0 = time.perf_counter()
        graphs[layers] = build(layers, hidden)
        log(f"built {layers} layers: {len(graphs[layers].nodes)} nodes in {time.perf_counter() - t0:.1f}s")
    best: dict[int, tuple] = {}
    for r in range(repeats):
        for layers, graph in graphs.items():
            canon, quant, wall = run_once(graph)
            if layers not in best or canon + quant < best[layers][0] + best[layers][1]:
                best[layers] = (canon, quant, wall)
            log(f"  repeat {r}: layers={layers} cpu: canonicalize={canon * 1e3:.1f}ms quantize={quant * 1e3:.1f}ms"
                f"; wall {wall:.2f}s")
    return [(layers, len(graphs[layers].nodes), *best[layers]) for layers in layer_counts]


def table(rows, title):
    per_node = [(c + q) / n for _, n, c, q, _ in rows]
    canon_node = [c / n for _, n, c, _, _ in rows]
    lines = [f"\n{title}",
             "| layers | nodes | canonicalize CPU ms | quantize-weights (RTN) CPU ms | total CPU us/node "
             "| canonicalize CPU us/node | wall s (both) |",
             "|---|---|---|---|---|---|---|"]
    for (layers, nodes, c, q, w), pn, cn in zip(rows, per_node, canon_node):
        lines.append(f"| {layers} | {nodes} | {c * 1e3:.1f} | {q * 1e3:.1f} | {pn * 1e6:.1f} | {cn * 1e6:.1f} "
                     f"| {w:.2f} |")
    lines.append(f"max/min time per node: total {max(per_node) / min(per_node):.2f}x, "
                 f"canonicalize {max(canon_node) / min(canon_node):.2f}x (must-show: within 2x)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 8, 24])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--against", metavar="PYTHON", help="also run under this interpreter, alternating")
    ap.add_argument("--rounds", type=int, default=2, help="with --against: A/B rounds")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line (for --against)")
    args = ap.parse_args(argv)
    import torch
    import transformers
    versions = (f"python {platform.python_version()}, torch {torch.__version__}, transformers "
                f"{transformers.__version__}, {torch.get_num_threads()} torch threads, {platform.machine()}")
    if args.json:
        rows = measure(args.layers, args.hidden, args.repeats, log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(rows))
        return
    print(versions)
    if not args.against:
        print(table(measure(args.layers, args.hidden, args.repeats), "this tree"))
        return
    cmd = [__file__, "--json", "--hidden", str(args.hidden), "--repeats", str(args.repeats),
           "--layers", *map(str, args.layers)]
    best: dict[str, dict] = {"against": {}, "this": {}}
    for r in range(args.rounds):
        for who, py in (("against", args.against), ("this", sys.executable)):
            out = subprocess.run([py, *cmd], check=True, capture_output=True, text=True).stdout
            for layers, nodes, c, q, w in json.loads(out.strip().splitlines()[-1]):
                old = best[who].get(layers)
                if old is None or c + q < old[2] + old[3]:
                    best[who][layers] = (layers, nodes, c, q, w)
            print(f"round {r} {who}: best CPU s " + ", ".join(f"{k}L {v[2] + v[3]:.2f}" for k, v in best[who].items()),
                  flush=True)
    print(table([best["against"][k] for k in args.layers], f"against: {args.against}"))
    print(table([best["this"][k] for k in args.layers], f"this tree: {sys.executable}"))


if __name__ == "__main__":
    main()
