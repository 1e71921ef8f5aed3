"""Textual pipelines: `"canonicalize,cse,quantize-weights{bits=4,group=64,method=awq},dce"`.

Grammar (MLIR-like):  pipeline := item ("," item)* ;  item := name ["{" opt ("," opt)* "}"] ;
opt := key "=" value ;  value := scalar | "[" [scalar ("," scalar)*] "]".
Values are converted to the pass's dataclass field types (int, float, bool, str, Literal,
list/tuple of those, Optional via `none`). `format_pipeline` prints the same text back.
Every pass's `validate()` runs here, so an unsupported option value (`bits=3`) fails when the
pipeline is parsed, not when the pass runs. Errors count passes from 1 and show the options as
`slimgraph passes` does (passes/options.py).
"""
from __future__ import annotations
import types
import typing
from typing import Any, Iterable, Literal

from . import options as O
from .base import Pass, PassError, get_pass


def parse_pipeline(spec: str | Iterable[str | Pass] | None) -> list[Pass]:
    """A pipeline string, or a list of pass specs / Pass objects -> list of configured passes."""
    if spec is None:
        return []
    items: list = []
    for item in [spec] if isinstance(spec, str) else spec:
        items.extend(_split(item, ",") if isinstance(item, str) else [item])
    out: list[Pass] = []
    for item in items:
        where = f"pipeline item #{len(out) + 1}"   # counted from 1, as a user counts
        if isinstance(item, Pass):
            p = item
        elif isinstance(item, str):
            try:
                p = _parse_item(item)
            except PassError as e:
                raise PassError(f"{where} {item!r}: {e}") from None
        else:
            raise PassError(f"{where}: pipeline entries must be pass specs or Pass objects, "
                            f"got {type(item).__name__}")
        try:
            p.validate()
        except (PassError, ValueError) as e:
            raise PassError(f"{where} {p.spec()!r}: {e}") from None
        out.append(p)
    return out


def format_pipeline(passes: Iterable[Pass]) -> str:
    return ",".join(p.spec() for p in passes)


def _split(s: str, sep: str) -> list[str]:
    """Split on `sep` outside {} and []; empty items are errors, not silently dropped."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += 1 if ch in "{[" else -1 if ch in "}]" else 0
        if depth < 0:
            raise PassError(f"unbalanced brackets in pipeline {s!r}")
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if depth:
        raise PassError(f"unbalanced brackets in pipeline {s!r}")
    parts.append(cur.strip())
    if len(parts) == 1 and not parts[0]:
        return []
    if not all(parts):
        raise PassError(f"empty entry in {s!r} (stray {sep!r}?)")
    return parts


def _parse_item(item: str) -> Pass:
    name, brace, rest = item.partition("{")
    name = name.strip()
    if brace and not rest.endswith("}"):
        raise PassError(f"pass spec {item!r}: options must end with '}}'")
    cls = get_pass(name)
    kwargs = {}
    types_ = cls.option_types()
    for opt in _split(rest[:-1], ",") if brace else []:
        key, eq, raw = opt.partition("=")
        key = key.strip()
        public = O.public_options(cls)
        if not public:
            raise PassError(f"pass {name!r} takes no options; write it as {name}")
        if not eq:
            raise PassError(f"option {opt!r} of pass {name!r} must be written key=value, "
                            f"e.g. {O.example(cls)}; its options:\n{O.describe(cls, '    ')}")
        if key not in public:
            raise PassError(f"pass {name!r} has no option {key!r}{O.closest(key, public)}; write options "
                            f"as {O.example(cls)}; its options (as `slimgraph passes` lists them):\n"
                            f"{O.describe(cls, '    ')}")
        kwargs[key] = convert(raw.strip(), types_[key], f"pass {name!r} option {key!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        given = ",".join(f"{k}={O.value_text(v)}" for k, v in kwargs.items())
        raise PassError(f"pass {name!r}: invalid options {{{given}}}: {e}") from None


def type_name(t) -> str:
    """A type as written in pipeline strings (see passes/options.py)."""
    return O.type_text(t)


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def convert(raw: str, t, where: str) -> Any:
    """Convert option text to type `t`; errors name `where` and the expected type."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() == "none" and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(raw, a, where)
            except PassError:
                pass
        raise PassError(f"{where}: cannot convert {raw!r} to {type_name(t)}")
    if origin is Literal:
        for a in args:
            if str(a).lower() == raw.lower():
                return a
        raise PassError(f"{where}: {raw!r} is not one of {O.type_text(t)}")
    if origin in (list, tuple):
        if not (raw.startswith("[") and raw.endswith("]")):
            raise PassError(f"{where}: expected a list like [a,b] ({type_name(t)}), got {raw!r}")
        elem = args[0] if args else str
        items = [convert(x, elem, where) for x in _split(raw[1:-1], ",")]
        return items if origin is list else tuple(items)
    if t is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise PassError(f"{where}: expected bool (true/false), got {raw!r}")
    if t in (int, float):
        try:
            if t is float and raw.endswith("%"):   # target_ppl=+5% means 0.05
                return float(raw[:-1]) / 100
            return t(raw)
        except ValueError:
            raise PassError(f"{where}: expected {t.__name__}, got {raw!r}") from None
    if t in (str, Any):
        return raw
    raise PassError(f"{where}: option type {type_name(t)} is not supported by the pipeline parser")
