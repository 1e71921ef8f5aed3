"""Pass options as a user writes them in a pipeline string, for `slimgraph passes` and for errors.

    describe(QuantizeWeights)  ->  "bits: int = 4\ngroup: int = 64\nsym: true|false|none = none\n..."
    type_text(Literal["rtn", "gptq"]) -> "rtn|gptq";  value_text(None) -> "none"

Only the options a pipeline string can set are shown (a pass's `options()`; Python-only fields such
as `calibration` are not). Types read as pipeline syntax: true|false, none, [str,...], a|b|c.
"""
from __future__ import annotations
import difflib
import types
import typing
from typing import Any, Literal


def public_options(cls) -> dict[str, tuple[Any, Any]]:
    """Option name -> (type, default) for the options a pipeline string can set, in field order."""
    types_ = cls.option_types()
    return {k: (types_.get(k, Any), v) for k, v in cls().options().items()}


def type_text(t) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return "|".join(parts + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "|".join(value_text(a) for a in args)
    if origin in (list, tuple):
        return f"[{type_text(args[0]) if args else 'str'},...]"
    if t is bool:
        return "true|false"
    if t is float:
        return "float"          # also N% (5% = 0.05)
    if t is Any:
        return "value"
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def value_text(v) -> str:
    """A value as written in a pipeline string: true/false/none, lists in brackets."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(value_text, v)) + "]"
    return str(v)


def describe(cls, indent: str = "") -> str:
    """One line per option: `name: type = default`, as `slimgraph passes` prints them."""
    lines = [f"{indent}{k}: {type_text(t)} = {value_text(d)}" for k, (t, d) in public_options(cls).items()]
    return "\n".join(lines) if lines else f"{indent}(no options)"


def example(cls) -> str:
    """The pass with its first two options at their defaults, e.g. `quantize-weights{bits=4,group=64}`."""
    opts = list(public_options(cls).items())[:2]
    if not opts:
        return cls.name
    return cls.name + "{" + ",".join(f"{k}={value_text(d)}" for k, (_, d) in opts) + "}"


def closest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
