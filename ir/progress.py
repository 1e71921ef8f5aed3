"""Progress bars for long steps: tqdm on stderr, the same rules everywhere in slimgraph.

    with progress.bar(len(items), "gguf: packing", "tensor") as bar:
        for x in items:
            ...
            bar.update(1)

Shown only when stderr is a terminal (tqdm's `disable=None`), never when the environment has
SLIMGRAPH_PROGRESS=0 (what `slimgraph --quiet` sets), and only once a step has run `delay`
seconds, so short steps print nothing. `enabled=True/False` overrides the terminal test (not the
quiet setting). Without tqdm installed the bar is a silent no-op. Dependency-free, so every layer
(ir, passes, codegen, the API) may use it.
"""
from __future__ import annotations
import os
import sys

ENV = "SLIMGRAPH_PROGRESS"


def quiet() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off")


class _Null:
    def update(self, n=1):
        pass

    def close(self):
        pass

    def set_postfix_str(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool | None = None, delay: float = 0.5,
        unit_scale: bool = False):
    """A tqdm bar (or a no-op object with update/close and the context-manager protocol)."""
    if quiet() or enabled is False:
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Null()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, delay=delay,
                disable=None if enabled is None else False, unit_scale=unit_scale)
