"""The pass manager: runs a pipeline, times it, verifies after each pass, dumps IR, and
bisects numerics against the interpreter.

    pm = PassManager("canonicalize,cse,dce", verify="numerics", example_inputs=[x])
    report = pm.run(graph)
    print(report)            # per-pass table: wall time, changed, stats

- `verify`: None = on under pytest or `SLIMGRAPH_DEBUG=1`; True = structural verifier after
  every pass; "numerics" = also run the interpreter on `example_inputs` before the pipeline
  and after every pass, and raise `NumericsError` naming the first pass whose outputs deviate.
- `print_ir_after`: "all", "changed" (passes that report a change), a pass name, or a comma list
  / list of those (default: `SLIMGRAPH_PRINT_IR_AFTER`); the IR goes to stderr.
- A pass that throws is re-raised as `PassError` naming it and the passes that ran before it.
- `reproducer` (default: `SLIMGRAPH_REPRODUCER`): a file path; when a pass fails, the IR it received
  is written there with a replay line, so the failure can be rerun on its own.
"""
from __future__ import annotations
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from ..ir.printer import print_graph
from .base import Pass, PassError
from .pipeline import format_pipeline, parse_pipeline

__all__ = ["PassManager", "PipelineReport", "PassRecord", "NumericsError", "run_pipeline"]


class NumericsError(PassError):
    """A pass changed the interpreter's outputs beyond tolerance."""


@dataclass
class PassRecord:
    name: str
    spec: str
    seconds: float
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    nodes_after: int = 0
    max_abs_err: float | None = None  # set under verify="numerics"

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec, "seconds": round(self.seconds, 6),
                "changed": self.changed, "stats": _jsonable(self.stats), "nodes_after": self.nodes_after,
                "max_abs_err": self.max_abs_err}


@dataclass
class PipelineReport:
    pipeline: str
    records: list[PassRecord] = field(default_factory=list)
    nodes_before: int = 0

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    def __getitem__(self, i) -> PassRecord:
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "seconds": round(self.seconds, 6),
                "nodes_before": self.nodes_before,
                "passes": [r.to_dict() for r in self.records]}

    def __str__(self) -> str:
        rows = [("pass", "time ms", "changed", "nodes", "stats")]
        for r in self.records:
            stats = ", ".join(f"{k}={v}" for k, v in r.stats.items())
            changed = "yes" if r.changed else "no"
            rows.append((r.spec, f"{r.seconds * 1e3:.1f}", changed, str(r.nodes_after), stats))
        rows.append(("total", f"{self.seconds * 1e3:.1f}", "", "", f"nodes before: {self.nodes_before}"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(line.rstrip() for line in lines)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def debug_default() -> bool:
    return os.environ.get("SLIMGRAPH_DEBUG") == "1" or "PYTEST_CURRENT_TEST" in os.environ


class PassManager:
    def __init__(self, passes: str | Iterable[str | Pass], verify: bool | str | None = None,
                 example_inputs: Iterable[torch.Tensor] | None = None, atol: float = 1e-4, rtol: float = 1e-4,
                 print_ir_after: str | Iterable[str] | None = None, progress: bool | None = None,
                 reproducer: str | None = None):
        self.passes = parse_pipeline(passes)
        self.verify = debug_default() if verify is None else verify
        if self.verify not in (True, False, "numerics"):
            raise ValueError(f"PassManager verify={verify!r}: use True, False or 'numerics'")
        self.example_inputs = list(example_inputs) if example_inputs is not None else None
        if self.verify == "numerics" and self.example_inputs is None:
            raise ValueError("PassManager(verify='numerics') needs example_inputs to run the interpreter on")
        self.atol, self.rtol = atol, rtol
        env = os.environ.get("SLIMGRAPH_PRINT_IR_AFTER")
        spec = print_ir_after if print_ir_after is not None else env
        self.print_ir_after = set(spec.split(",")) if isinstance(spec, str) else set(spec or ())
        self.progress = progress
        self.reproducer = reproducer if reproducer is not None else os.environ.get("SLIMGRAPH_REPRODUCER")

    @property
    def pipeline(self) -> str:
        return format_pipeline(self.passes)

    def run(self, graph) -> PipelineReport:
        report = PipelineReport(self.pipeline, nodes_before=len(graph.nodes))
        reference = self._interpret(graph, "the input graph") if self.verify == "numerics" else None
        for i, p in enumerate(self._iter()):
            before = print_graph(graph) if self.reproducer else None
            try:
                report.records.append(self._run_one(graph, p, i, reference))
            except PassError as e:
                if before is not None:
                    e.args = (f"{e}\n  reproducer (the IR this pass got): {self._save(before, p, i)}",)
                raise
        return report

    def _run_one(self, graph, p: Pass, i: int, reference) -> PassRecord:
        start = time.perf_counter()
        try:
            result = p.run(graph)
        except Exception as e:
            raise PassError(f"pass {p.spec()!r} (#{i + 1} in pipeline) failed: {type(e).__name__}: {e}\n"
                            f"  passes that ran before it: {self._before(i)}") from e
        if result is None or not hasattr(result, "changed"):
            raise PassError(f"pass {p.name!r} returned {result!r}; "
                            "pass developer: run() must return PassResult")
        rec = PassRecord(p.name, p.spec(), time.perf_counter() - start, bool(result.changed),
                         dict(result.stats), len(graph.nodes))
        self._dump(graph, p, i, rec.changed)
        if self.verify:
            self._verify(graph, p, i)
        if reference is not None:
            rec.max_abs_err = self._compare(graph, reference, p, i)
        return rec

    def _save(self, ir_text: str, p: Pass, i: int) -> str:
        """Write the IR a failing pass received, with the command that replays it (MLIR-style)."""
        path = self.reproducer
        header = (f"# slimgraph reproducer: pass {p.spec()!r} (#{i + 1} of {self.pipeline!r}) failed on this "
                  "graph.\n"
                  f"# replay: PassManager({p.spec()!r}, verify=True)"
                  f".run(parse_graph(open({path!r}).read(), weights=...))\n")
        with open(path, "w") as f:
            f.write(header + ir_text)
        return path

    def _iter(self):
        show = self.progress if self.progress is not None else (sys.stderr.isatty() and len(self.passes) > 3)
        if not show:
            return self.passes
        from tqdm import tqdm
        return tqdm(self.passes, desc="slimgraph passes", unit="pass", file=sys.stderr)

    def _before(self, i: int) -> str:
        return format_pipeline(self.passes[:i]) or "(none)"

    def _dump(self, graph, p: Pass, i: int, changed: bool):
        want = self.print_ir_after
        if "all" in want or p.name in want or ("changed" in want and changed):
            print(f"// ----- IR after pass {p.spec()!r} (#{i + 1}) -----\n{graph}", file=sys.stderr, flush=True)

    def _verify(self, graph, p: Pass, i: int):
        from ..ir.verifier import VerifyError, verify
        try:
            verify(graph)
        except VerifyError as e:
            raise PassError(f"graph is invalid after pass {p.spec()!r} (#{i + 1} in pipeline; before it: "
                            f"{self._before(i)}):\n{e}") from e

    def _interpret(self, graph, when: str) -> list[torch.Tensor]:
        from ..ir.interpreter import run
        try:
            return run(graph, *self.example_inputs)
        except Exception as e:
            raise PassError(f"interpreter failed on {when}: {e}") from e

    def _compare(self, graph, reference, p: Pass, i: int) -> float:
        outs = self._interpret(graph, f"the graph after pass {p.spec()!r} (#{i + 1})")
        where = f"pass {p.spec()!r} (#{i + 1} in pipeline; before it: {self._before(i)})"
        if len(outs) != len(reference):
            raise NumericsError(f"{where} changed the number of outputs: {len(reference)} -> {len(outs)}")
        worst = 0.0
        for k, (ref, out) in enumerate(zip(reference, outs)):
            if out.shape != ref.shape or out.dtype != ref.dtype:
                raise NumericsError(f"{where} changed output {k} from {ref.dtype}{list(ref.shape)} "
                                    f"to {out.dtype}{list(out.shape)}")
            err = _max_abs_err(ref, out)
            if not torch.allclose(out.double(), ref.double(), atol=self.atol, rtol=self.rtol, equal_nan=True):
                raise NumericsError(f"{where} broke numerics: output {k} deviates from the input graph's, "
                                    f"max abs error {err:.3g} (atol={self.atol}, rtol={self.rtol})")
            worst = max(worst, err)
        return worst


def _max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    d = (a.double() - b.double()).abs()
    d = torch.where(torch.isnan(a.double()) & torch.isnan(b.double()), torch.zeros_like(d), d)
    return float(torch.nan_to_num(d, nan=float("inf")).max())


def run_pipeline(graph, pipeline, **kwargs) -> PipelineReport:
    """Shorthand: `PassManager(pipeline, **kwargs).run(graph)`."""
    return PassManager(pipeline, **kwargs).run(graph)
