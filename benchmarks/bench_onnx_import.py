"""ONNX import time, and how much of it symbolic-dim canonicalization takes: each file imported with slimgraph's
canonicalizer (ir/symbolic.py: nested floors simplified from the inside out) and with plain sympy.simplify on
every dim (the canonicalizer before 2026-12-03), interleaved in one process (the machines are shared: ratios,
not absolute times). Every canonicalized dim of the two imports is also compared: they must be equal.

    python benchmarks/bench_onnx_import.py                        # the ONNX corpus files that are installed
    python benchmarks/bench_onnx_import.py path/to/model.onnx ...  # any files (a YOLOv8 with dynamic H/W, ...)

Prints per file: seconds with each canonicalizer, the ratio, the number of distinct dims and whether they agree.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import sympy

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "frontends"))


def _import_seconds(path: str, plain: bool) -> tuple[float, dict]:
    from slimgraph.frontends.onnx_import import import_onnx
    from slimgraph.ir import symbolic as S
    S._canon_str.cache_clear()
    S._expr.cache_clear()
    seen: dict = {}
    ours = S._simplify

    def record(e):
        out = sympy.simplify(e) if plain else ours(e)
        seen[str(e)] = str(out)
        return out
    S._simplify = record
    try:
        t = time.perf_counter()
        import_onnx(path)
        return time.perf_counter() - t, seen
    finally:
        S._simplify = ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    files = args.files
    if not files:
        from onnx_corpus import CORPUS, locate
        files = [p for p in (locate(e) for e in CORPUS) if p]
    import torch
    print(f"torch {torch.__version__}, sympy {sympy.__version__}, loadavg {os.getloadavg()}", flush=True)
    print(f"{'file':60s} {'ours s':>8s} {'simplify s':>11s} {'ratio':>7s} {'dims':>5s} agree")
    for path in files:
        ours, plain = [], []
        for _ in range(args.repeats):
            s_ours, d_ours = _import_seconds(path, plain=False)
            s_plain, d_plain = _import_seconds(path, plain=True)
            ours.append(s_ours)
            plain.append(s_plain)
        both = d_ours.keys() & d_plain.keys()       # ours also records the floors' inner dims it simplifies
        agree = all(d_plain[k] == d_ours[k] for k in both)
        a, b = min(ours), min(plain)
        print(f"{path[-60:]:60s} {a:8.2f} {b:11.2f} {b / a:6.1f}x {len(both):5d} {agree}", flush=True)


if __name__ == "__main__":
    main()
