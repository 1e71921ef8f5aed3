"""A tiny FileCheck for IR text: ordered key lines instead of whole-output diffs (MLIR style).

    filecheck(str(graph), '''
        CHECK: rms_norm(%x, @w)
        CHECK-NEXT: return
        CHECK-NOT: rsqrt
    ''')

CHECK: the next line containing the text, after the previous match. CHECK-NEXT: the line right
after the previous match. CHECK-NOT: no line between the previous match and the next positive
match (or the end) contains the text. CHECK-COUNT-n: exactly n lines in the whole text contain it.
"""
from __future__ import annotations
import re


def filecheck(text: str, checks: str):
    lines = text.splitlines()
    pos, pending_not = 0, []
    for raw in filter(None, (c.strip() for c in checks.strip().splitlines())):
        kind, _, pat = raw.partition(":")
        pat = pat.strip()
        if kind == "CHECK-NOT":
            pending_not.append(pat)
            continue
        if m := re.fullmatch(r"CHECK-COUNT-(\d+)", kind):
            n = sum(pat in ln for ln in lines)
            assert n == int(m.group(1)), f"expected {m.group(1)} lines with {pat!r}, found {n}\n{text}"
            continue
        if kind == "CHECK-NEXT":
            hit = pos if pos < len(lines) and pat in lines[pos] else None
        elif kind == "CHECK":
            hit = next((i for i in range(pos, len(lines)) if pat in lines[i]), None)
        else:
            raise ValueError(f"unknown directive {raw!r}")
        assert hit is not None, f"{kind}: {pat!r} not found after line {pos}\n{text}"
        _check_not(lines[pos:hit], pending_not, text)
        pending_not, pos = [], hit + 1
    _check_not(lines[pos:], pending_not, text)


def _check_not(segment, pats, text):
    for p in pats:
        bad = [ln for ln in segment if p in ln]
        assert not bad, f"CHECK-NOT: {p!r} found in {bad[0]!r}\n{text}"
