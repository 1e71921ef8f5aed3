"""Parse the text form written by `printer.print_graph` (round-trip exact)."""
import json
import re

from .graph import Graph
from .types import TensorType


class ParseError(ValueError):
    pass


_HEADER = re.compile(r"graph @([\w.\-]+)\((.*)\) \{$")
_WEIGHT = re.compile(r"weight @([\w.\-]+): (.+)$")
_NODE = re.compile(r"(.+?) = ([\w.]+)\((.*?)\)(?: \{(.*)\})?$")
_TYPE = re.compile(r"(\w+)\[(.*)\]$")
_STATE = re.compile(r"state ([\w.\-]+): (%[\w.\-]+) -> (%[\w.\-]+) (\w+)(?:\{(.*)\})?$")


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets/parens/quotes."""
    out, depth, cur, quote = [], 0, [], False
    for ch in s:
        if ch == '"':
            quote = not quote
        elif not quote and ch in "([{":
            depth += 1
        elif not quote and ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0 and not quote:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur or out:
        out.append("".join(cur))
    return [x.strip() for x in out if x.strip()]


def parse_type(s: str) -> TensorType:
    m = _TYPE.match(s.strip())
    if not m:
        raise ParseError(f"bad type {s!r}; expected like f32[1,seq,64]")
    dims = [int(d) if re.fullmatch(r"-?\d+", d) else d for d in split_top(m.group(2))]
    return TensorType(m.group(1), tuple(dims))


def _typed_name(s: str) -> tuple[str, TensorType]:
    name, _, t = s.partition(": ")
    if not name.startswith("%") or not t:
        raise ParseError(f"expected '%name: type', got {s!r}")
    return name[1:], parse_type(t)


def parse_attrs(s: str) -> dict:
    attrs, dec, i = {}, json.JSONDecoder(), 0
    while i < len(s):
        eq = s.index("=", i)
        key = s[i:eq].strip()
        val, end = dec.raw_decode(s, eq + 1)
        attrs[key] = val
        i = end
        while i < len(s) and s[i] in ", ":
            i += 1
    return attrs


def parse_graph(text: str, weights: dict | None = None) -> Graph:
    """Parse IR text. `weights` maps weight names to tensors or loaders; missing ones stay unloaded
    (accessing them raises)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise ParseError("empty graph text")
    m = _HEADER.match(lines[0])
    if not m:
        raise ParseError(f"line 1: expected 'graph @name(%in: type, ...) {{', got {lines[0]!r}")
    g = Graph(m.group(1))
    env = {}
    for part in split_top(m.group(2)):
        name, t = _typed_name(part)
        env["%" + name] = g.add_input(name, t)
    weights = weights or {}
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            if line == "}":
                break
            if line.startswith("weight "):
                wm = _WEIGHT.match(line)
                if not wm:
                    raise ParseError("expected 'weight @name: type'")
                name, t = wm.group(1), parse_type(wm.group(2))
                data = weights.get(name, _missing(name))
                env["@" + name] = g.add_weight(name, data, type=t)
            elif line.startswith("state "):
                sm = _STATE.match(line)
                if not sm:
                    raise ParseError("expected 'state NAME: %input -> %output KIND{attrs}'")
                g.declare_state(sm.group(1), _lookup(env, sm.group(2)), _lookup(env, sm.group(3)), sm.group(4),
                                **parse_attrs(sm.group(5) or ""))
            elif line.startswith("return"):
                g.set_outputs([_lookup(env, r) for r in split_top(line[len("return"):])])
            else:
                nm = _NODE.match(line)
                if not nm:
                    raise ParseError("expected '%out: type = op(%a, ...) {attrs}'")
                outs = [_typed_name(o) for o in split_top(nm.group(1))]
                for n, _ in outs:  # add_node would silently rename a clash; in text that is an error
                    if "%" + n in env or "@" + n in env:
                        raise ParseError(f"%{n} is already defined")
                args = [_lookup(env, a) for a in split_top(nm.group(3))]
                node = g.add_node(nm.group(2), args, parse_attrs(nm.group(4) or ""),
                                  out_types=[t for _, t in outs], names=[n for n, _ in outs])
                for o in node.outputs:
                    env["%" + o.name] = o
        except (ParseError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ParseError(f"line {lineno}: {line!r}: {e}") from None
    return g


def _lookup(env, ref):
    try:
        return env[ref]
    except KeyError:
        raise ParseError(f"{ref} is used before it is defined") from None


def _missing(name):
    def load():
        raise KeyError(f"weight @{name} has no data (the graph was parsed without weights)")
    return load
