"""Trainable components that passes insert with placeholder values, and whether they have been trained.

Two passes add weights that are meant to be trained after `optimize`:

    linearize-attention{...}   Hedgehog feature maps at the identity      -> slimgraph.distill_attention
    insert-draft-heads{...}    zero Medusa heads, or a seeded EAGLE layer -> slimgraph.train_draft_heads

Untrained, they run (the graph is valid) but are not what the user wants: SmolLM2-135M with identity
feature maps has perplexity ~187 instead of ~12; zero Medusa heads only slow speculative decoding down.

The record is the model's OptimizeReport (slimgraph/compiled.py), which the artifact's manifest keeps (and
`slimgraph inspect` reads without torch): `optimize` lists the spec of every pass of TRAINABLE that ran in
`report.untrained`; the training functions call `mark_trained`, which moves it to `report.trained` with what
the training did (tokens, steps, CPU seconds, the held-out figure). A marker, not a look at the values (the
EAGLE layer's seeded initialization is not recognisable by value): the training function says whether its
call changed the components, and one that ended with the values it began with (no update ran, updates that
moved nothing, early stopping that kept step 0, a revert to the initial heads) leaves them UNTRAINED, with a
warning when updates ran. Artifacts written before the
record existed have neither field and list nothing (as before).

`untrained_components(x)` (a CompiledModel, an OptimizeReport or a manifest's report dict) is the one
question the CLI (`compile`, `inspect`) and `CompiledModel.save` ask.
"""
from __future__ import annotations
import math
import numbers
import warnings
from dataclasses import dataclass


class UntrainedWarning(UserWarning):
    """Saving a model whose inserted trainable components still hold their initial values."""


@dataclass(frozen=True)
class Trainable:
    what: str          # what the pass inserts, for messages
    function: str      # the public function that trains it
    initial: str       # what the untrained values are


TRAINABLE: dict[str, Trainable] = {
    "linearize-attention": Trainable("attention feature maps", "slimgraph.distill_attention",
                                     "identity feature maps"),
    "insert-draft-heads": Trainable("draft heads", "slimgraph.train_draft_heads", "zero Medusa heads"),
}


def is_count(x, least: int = 0) -> bool:
    """Whether a training argument is an integer (Python or numpy, not bool) >= `least`."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= least


def is_amount(x, positive: bool = False) -> bool:
    """Whether a training argument is a real number (not bool, not NaN) >= 0, or > 0 and finite when `positive`
    (a learning rate); budgets may be inf (no limit)."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool) or math.isnan(x):
        return False
    return (x > 0 and math.isfinite(x)) if positive else x >= 0


def _initial(spec: str, t: Trainable) -> str:
    return "a seeded EAGLE layer" if "kind=eagle" in spec.replace(" ", "") else t.initial


def pass_name(spec: str) -> str:
    """`linearize-attention{window=8}` -> `linearize-attention`."""
    return spec.split("{", 1)[0].strip()


def inserted_specs(passes: list[dict]) -> list[str]:
    """The specs of the passes (report.passes entries: name, spec, ...) that insert trainable components."""
    return [p.get("spec") or p["name"] for p in passes if p.get("name") in TRAINABLE]


def _report(x):
    report = getattr(x, "report", x)
    return report if isinstance(report, dict) else vars(report) if report is not None else {}


def untrained_components(x) -> list[str]:
    """The inserted trainable components of `x` (a CompiledModel, an OptimizeReport or a manifest's report
    dict) that no training function has trained yet, one line each: what, which pass inserted it, and the
    function that trains it. Empty when there are none (or the record predates this check)."""
    out = []
    for spec in _report(x).get("untrained") or []:
        t = TRAINABLE.get(pass_name(spec))
        out.append(f"{t.what} of {spec} ({_initial(spec, t)}; train with {t.function})" if t else spec)
    return out


def untrained_message(components: list[str], where: str = "") -> str:
    return (f"{where}the model carries UNTRAINED inserted components, which still hold their initial values: "
            + "; ".join(components) + ". Train them after optimize, before saving: "
            "slimgraph.distill_attention(compiled, tokenizer=tok, time_budget_s=None, cpu_budget_s=300) for "
            "feature maps, slimgraph.train_draft_heads(compiled, tokenizer=tok, time_budget_s=None, "
            "cpu_budget_s=300) for draft heads (or compile with `slimgraph compile ... --train-budget SECONDS`)")


def mark_trained(compiled, name: str, report, *, tokens: int, changed: bool = True) -> None:
    """Record on `compiled.report` that the components `name` (a TRAINABLE pass name) inserted were trained
    by `report` (a DistillReport or DraftTrainReport): the spec leaves `untrained`, and `trained` gets
    what the training did. `changed`: whether the call left the components with other values than it found
    (the training function knows: compared tensors, a revert, early stopping at step 0). A call that changed
    nothing records nothing (the components keep what they had, UNTRAINED ones stay so), and warns when
    updates ran (report.steps > 0), naming the training function. Called by the training functions; a model
    without a report is left alone."""
    t = TRAINABLE[name]
    steps = int(getattr(report, "steps", 0))
    if steps > 0 and not changed:
        warnings.warn(f"{t.function}(): the {t.what} keep the parameters they had before this call ({report}); "
                      f"train longer or on more varied data", stacklevel=3)
    r = getattr(compiled, "report", None)
    if r is None or not hasattr(r, "untrained") or steps <= 0 or not changed:
        return
    specs = [s for s in r.untrained if pass_name(s) == name]
    # trained again (the spec already left `untrained`): the record names the pass as optimize ran it
    specs = specs or [s for s in inserted_specs(r.passes) if pass_name(s) == name]
    r.untrained = [s for s in r.untrained if pass_name(s) != name]
    r.trained.append({"component": t.what, "spec": ", ".join(specs) or name, "function": t.function,
                      "tokens": int(tokens), "steps": int(getattr(report, "steps", 0)),
                      "cpu_seconds": round(float(getattr(report, "cpu_seconds", 0.0)), 3),
                      "data_seconds": round(float(getattr(report, "data_seconds", 0.0)), 3),
                      "summary": str(report)})


def describe_trained(entry: dict) -> str:
    """One report line for a `report.trained` entry (the training report's own line says tokens, time and the
    held-out figure)."""
    return f"trained {entry['component']} of {entry['spec']} ({entry['function']}): {entry['summary']}"
