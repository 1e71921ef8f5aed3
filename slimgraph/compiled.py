"""`CompiledModel`: an optimized graph plus a target's runner, callable like the source model.

    fast = slimgraph.optimize(model, (x,))
    fast(x)                  # the source model's call signature and output structure
    fast.run(x)              # raw graph call: flat tensors in, list of tensors out
    fast.report              # what optimize did (passes, times, sizes, op counts)
    fast.save("out/model.sg"); fast.generate(ids, max_new_tokens=32)   # (causal LMs)
    fast.decoder()           # (causal LMs) the decoder runtime: prefill, step, verify, accept
"""
from __future__ import annotations
from dataclasses import asdict, dataclass, field
from typing import Any

from .signature import InputCheck, Signature


@dataclass
class OptimizeReport:
    target: str
    pipeline: str
    passes: list[dict] = field(default_factory=list)   # name, spec, seconds, changed, stats, ...
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0                                # optimize() wall time
    notes: list[str] = field(default_factory=list)      # skipped passes, fallbacks, ...
    # inserted trainable components (slimgraph/trainable.py): specs of the passes whose components still hold
    # their initial values, and what each training function did (filled by slimgraph.trainable.mark_trained)
    untrained: list[str] = field(default_factory=list)
    trained: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> OptimizeReport:
        return OptimizeReport(**{k: d[k] for k in OptimizeReport.__dataclass_fields__ if k in d})

    def __str__(self) -> str:
        lines = [f"target {self.target!r}, pipeline {self.pipeline or '(none)'!r}, optimized in {self.seconds:.2f} s"]
        for p in self.passes:
            stats = ", ".join(f"{k}={_fmt_stat(v)}" for k, v in p.get("stats", {}).items())
            lines.append(f"  {p['spec']:<40} {p['seconds'] * 1e3:8.1f} ms  {'changed' if p['changed'] else '-':<7} {stats}")
        n0, n1 = sum(self.ops_before.values()), sum(self.ops_after.values())
        lines.append(f"  nodes {n0} -> {n1}; weights {_fmt_bytes(self.weight_bytes_before)} -> "
                     f"{_fmt_bytes(self.weight_bytes_after)}")
        diff = {op: (self.ops_before.get(op, 0), self.ops_after.get(op, 0))
                for op in {**self.ops_before, **self.ops_after}}
        changed = [f"{op} {a}->{b}" for op, (a, b) in sorted(diff.items()) if a != b]
        if changed:
            lines.append("  ops changed: " + ", ".join(changed))
        lines += [f"  note: {n}" for n in self.notes]
        from .trainable import describe_trained, untrained_components
        lines += [f"  {describe_trained(t)}" for t in self.trained]
        lines += [f"  UNTRAINED: {c}" for c in untrained_components(self)]
        return "\n".join(lines)


def _fmt_stat(v, most: int = 6) -> str:
    """A pass statistic for one report line: long per-layer maps and lists are summarized (the full
    values stay in `report.to_dict()` and the artifact's manifest)."""
    if isinstance(v, dict) and len(v) > most:
        if all(isinstance(x, str) for x in v.values()):          # e.g. select-precision's choice per layer
            counts: dict[str, int] = {}
            for x in v.values():
                counts[x] = counts.get(x, 0) + 1
            return "{" + ", ".join(f"{k}: {n} layers" for k, n in sorted(counts.items())) + "}"
        return f"{{{len(v)} entries}}"
    if isinstance(v, (list, tuple)) and len(v) > most:
        return f"[{len(v)} items]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


class CompiledModel:
    def __init__(self, graph, target: str, pipeline: str, runner, *, signature: Signature | None = None,
                 kv=None, report: OptimizeReport | None = None):
        self.graph, self.target, self.pipeline = graph, target, pipeline
        self.signature = signature or Signature("flat", input_names=[v.name for v in graph.inputs])
        self.kv = kv
        self.report = report or OptimizeReport(target, pipeline)
        self.last_generate_stats = None
        self.runner = runner   # codegen.contract.Runner: the target's loaded build products
        self._check = None     # InputCheck, built on the first call

    def run(self, *tensors) -> list:
        """Raw graph call: graph inputs in order -> graph outputs in order (no output structure).
        The inputs are checked against the graph's (count, dtype, rank, static and symbolic dims;
        a few microseconds per input): a SignatureError names the input, expected and given."""
        check = self._check
        if check is None:
            check = self._check = InputCheck(self.graph.inputs)
        check(tensors)
        return self.runner(*tensors)

    def decoder(self, batch: int = 1):
        """A slimgraph.decoder.Decoder over this causal LM: prefill/step/verify/accept with owned state."""
        from .decoder import Decoder
        return Decoder(self, batch)

    def __call__(self, *args, **kwargs) -> Any:
        flat = self.signature.flatten_call(args, kwargs, self.graph)
        return self.signature.unflatten_outputs(self.run(*flat), self.graph)

    def generate(self, input_ids, max_new_tokens: int = 32, **kwargs):
        """Greedy (or sampled) decoding with the KV cache; see slimgraph.generate.generate.
        Stops at the source model's eos tokens (its generation config) unless `eos_token_id` is given."""
        from .generate import generate
        if "eos_token_id" not in kwargs and self.kv is not None and self.kv.eos_token_ids:
            kwargs["eos_token_id"] = list(self.kv.eos_token_ids)
        return generate(self, input_ids, max_new_tokens, **kwargs)

    def save(self, path) -> None:
        """Write the artifact (slimgraph/artifact.py). Warns (UntrainedWarning, once) when inserted trainable
        components were never trained (slimgraph/trainable.py), naming them and the function to call."""
        from .artifact import save
        from .trainable import UntrainedWarning, untrained_components, untrained_message
        untrained = untrained_components(self)
        if untrained:
            import warnings
            warnings.warn(untrained_message(untrained, f"saving {path}: "), UntrainedWarning, stacklevel=2)
        save(self, path)

    def __repr__(self) -> str:
        ins = ", ".join(f"%{v.name}: {v.type}" for v in self.graph.inputs[:4])
        more = f", ... ({len(self.graph.inputs)} inputs)" if len(self.graph.inputs) > 4 else ""
        return f"CompiledModel(target={self.target!r}, pipeline={self.pipeline!r}, inputs=({ins}{more}))"
