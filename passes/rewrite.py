"""Declarative rewriting: `(pattern, fn)` rules matched by walking use-def chains from an anchor.

    X = P.var("x")
    rules = RuleSet([
        (P("mul", X, C(1.0)), lambda root, x: x if root.output.type.matches(x.type) else None),
        (P("mul", X, P("sigmoid", X)), lambda g, x: g.op("silu", x)),
    ], name="example")
    stats = apply_rules(graph, rules + other_rules, name="canonicalize")

A pattern `P(op, *srcs, name=, attrs=, where=)` matches a Value produced by `op` (a name or
tuple of names) whose inputs match `srcs` in order (binary commutative ops also try the swapped
order). `P.var("x")` matches any value; `C(2.0)` matches a scalar constant. A name used twice
must bind the same Value (that is how `x * rsqrt(mean(x^2))` ties both uses of x together).

`fn` receives the captures whose names it declares as parameters, plus optionally `g` (the
graph) and `root` (the anchor node). New nodes it builds are inserted before the anchor.
It returns the replacement Value (or a list, one per anchor output), or None for "no match", or
a string saying why it declined (recorded by the trace, so a test can assert why a rule did not fire).
Replacements must have the anchor outputs' types; a rule that breaks this is a bug and raises.

`apply_rules` runs a worklist to a fixed point (users of replaced values are revisited), erases
the pure nodes that become dead, counts rewrites per rule and stops runaway rule sets. Pass
`trace=[]` (or set `SLIMGRAPH_TRACE_REWRITES=1` to print to stderr) to record every fired or
declined rule as a `RewriteEvent`.
Matching is local (no subgraph isomorphism): cost is O(nodes x rules-per-op x pattern size).
"""
from __future__ import annotations
import inspect
import math
import os
import sys
from collections import deque
from typing import Any, Callable, Iterable, NamedTuple

from ..ir.registry import get_op

__all__ = ["P", "C", "Rule", "RuleSet", "RewriteError", "RewriteEvent", "apply_rules", "const_value",
           "erase_dead"]

SPECIAL_PARAMS = ("g", "root")


class RewriteError(RuntimeError):
    pass


def _commutative(op: str) -> bool:
    """The op's registry traits say its two operands may be swapped (an unknown op: no)."""
    try:
        return get_op(op).has("commutative")
    except KeyError:
        return False  # RuleSet reports the typo with the rule's name


class P:
    """A pattern node. See the module docstring."""
    __slots__ = ("ops", "srcs", "name", "attrs", "where", "commutative")

    def __init__(self, op: str | tuple[str, ...] | None = None, *srcs: P, name: str | None = None,
                 attrs: dict[str, Any] | None = None, where: Callable[[Any], bool] | None = None,
                 commutative: bool | None = None, any_inputs: bool = False):
        self.ops = (op,) if isinstance(op, str) else tuple(op) if op else None
        self.srcs = None if any_inputs or (self.ops is None and not srcs) else srcs
        self.name, self.attrs, self.where = name, attrs or {}, where
        if commutative is None:
            commutative = self.ops is not None and len(srcs) == 2 and all(_commutative(o) for o in self.ops)
        self.commutative = commutative

    @staticmethod
    def var(name: str | None = None, where: Callable[[Any], bool] | None = None) -> P:
        return P(None, name=name, where=where)

    def captures(self) -> set[str]:
        out = {self.name} if self.name else set()
        for s in self.srcs or ():
            out |= s.captures()
        return out

    def match(self, v, caps: dict) -> bool:
        """Match value `v`, extending `caps` in place (left partially filled on failure)."""
        if self.name is not None and self.name in caps:
            return caps[self.name] is v
        if self.ops is not None:
            node = v.producer
            if node is None or node.op not in self.ops:
                return False
            for k, want in self.attrs.items():
                got = node.attrs.get(k)
                if not (want(got) if callable(want) else got == want):
                    return False
            if self.srcs is not None and not self._match_srcs(node.inputs, caps):
                return False
        if self.where is not None and not self.where(v):
            return False
        if self.name is not None:
            caps[self.name] = v
        return True

    def _match_srcs(self, inputs, caps) -> bool:
        if len(inputs) != len(self.srcs):
            return False
        orders = [inputs, inputs[::-1]] if self.commutative else [inputs]
        for order in orders:
            trial = dict(caps)
            if all(p.match(x, trial) for p, x in zip(self.srcs, order)):
                caps.update(trial)
                return True
        return False

    def __repr__(self):
        head = "|".join(self.ops) if self.ops else "*"
        args = ", ".join(map(repr, self.srcs or ()))
        return f"{head}({args})" + (f"@{self.name}" if self.name else "")


def const_value(v) -> float | int | bool | None:
    """The scalar held by `v` if it is a `constant` node or a one-element weight, else None."""
    node = v.producer
    if node is not None:
        return node.attrs["value"] if node.op == "constant" else None
    if v.is_weight and v.type.is_static and math.prod(v.type.shape) == 1:
        try:
            return v.tensor.item()
        except KeyError:  # parsed without weight data
            return None
    return None


def C(value=None, name: str | None = None, rel_tol: float = 0.0) -> P:
    """A scalar constant; `value=None` matches any constant (capture it and read `const_value`)."""
    def check(v):
        c = const_value(v)
        if c is None or isinstance(c, bool):
            return False
        return value is None or c == value or math.isclose(c, value, rel_tol=rel_tol)
    return P(None, name=name, where=check)


class Rule:
    def __init__(self, pattern: P, fn: Callable, name: str | None = None):
        if not pattern.ops:
            raise ValueError(f"rule {name or fn.__name__}: the root pattern must name its op(s)")
        self.pattern, self.fn = pattern, fn
        self.name = name or (fn.__name__.strip("_").replace("_", "-") if fn.__name__ != "<lambda>"
                             else f"{'|'.join(pattern.ops)}-rule")
        self.params = list(inspect.signature(fn).parameters)
        unknown = set(self.params) - pattern.captures() - set(SPECIAL_PARAMS)
        if unknown:
            raise ValueError(f"rule {self.name}: fn parameters {sorted(unknown)} are not captured by the "
                             f"pattern (captures: {sorted(pattern.captures())}; "
                             f"also allowed: {SPECIAL_PARAMS})")

    def match(self, node) -> dict | None:
        caps: dict = {}
        out = node.outputs[0] if node.outputs else None
        if out is None or not self.pattern.match(out, caps):
            return None
        return caps

    def call(self, graph, node, caps):
        env = {**caps, "g": graph, "root": node}
        return self.fn(**{k: env[k] for k in self.params})

    def __repr__(self):
        return f"Rule({self.name}: {self.pattern!r})"


class RuleSet:
    """An ordered collection of rules, indexed by anchor op; combine with `+`."""

    def __init__(self, rules: Iterable[Rule | tuple] = (), name: str = "rules"):
        self.name = name
        self.rules = [r if isinstance(r, Rule) else Rule(*r) for r in rules]
        self.by_op: dict[str, list[Rule]] = {}
        for r in self.rules:
            for op in r.pattern.ops:
                get_op(op)  # fail early on a typo in a pattern's op name
                self.by_op.setdefault(op, []).append(r)

    def __add__(self, other: RuleSet) -> RuleSet:
        return RuleSet(self.rules + other.rules, name=f"{self.name}+{other.name}")

    def __len__(self):
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)


class RewriteEvent(NamedTuple):
    stage: str    # the apply_rules name, e.g. "canonicalize"
    rule: str
    anchor: str   # the anchor node as printed before the rewrite
    outcome: str  # "applied", or why the rule declined

    def __str__(self):
        return f"[{self.stage}] {self.rule} {self.outcome}: {self.anchor}"


def apply_rules(graph, rules: RuleSet | Iterable, name: str = "rewrite", max_rewrites: int | None = None,
                trace: list | None = None) -> dict:
    """Rewrite `graph` to a fixed point; returns {rule name: count, ..., "erased": dead nodes removed}."""
    rules = rules if isinstance(rules, RuleSet) else RuleSet(rules)
    if trace is None and os.environ.get("SLIMGRAPH_TRACE_REWRITES") == "1":
        trace = _StderrTrace()
    cap = max_rewrites if max_rewrites is not None else 10 * len(graph.nodes) + 100
    counts: dict[str, int] = {}
    erased = 0
    work = deque(graph.nodes)
    queued = {id(n) for n in work}

    def push(n):
        if id(n) not in queued:
            queued.add(id(n))
            work.append(n)

    while work:
        node = work.popleft()
        queued.discard(id(node))
        if node.graph is not graph:
            continue
        for rule in rules.by_op.get(node.op, ()):
            caps = rule.match(node)
            if caps is None:
                continue
            anchor = repr(node) if trace is not None else ""
            new_vals, new_nodes = _call(graph, rule, node, caps, name)
            if not isinstance(new_vals, list):  # declined: drop whatever the fn built
                for n in reversed(new_nodes):
                    erase_dead(graph, n)
                if trace is not None and new_vals is not None:
                    trace.append(RewriteEvent(name, rule.name, anchor, f"declined ({new_vals})"))
                continue
            if trace is not None:
                trace.append(RewriteEvent(name, rule.name, anchor, "applied"))
            counts[rule.name] = counts.get(rule.name, 0) + 1
            if sum(counts.values()) > cap:
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
                raise RewriteError(f"{name}: more than {cap} rewrites; the rule set does not converge "
                                   f"(rules that keep firing: {top}). Check for rules that undo each other.")
            for old, new in zip(node.outputs, new_vals):
                old.replace_all_uses_with(new)
            for n in new_nodes:
                push(n)
            for v in new_vals:
                for u in v.users:
                    push(u)
            # a value that lost a use may now match a rule that wants a single user: revisit its users
            erased += erase_dead(graph, node, lambda v: [push(u) for u in v.users])
            break
    if erased:
        counts["erased"] = erased
    return counts


def _call(graph, rule: Rule, node, caps, name):
    """Run a rule's fn with the insertion point before the anchor; returns (list of values, or None,
    or the reason it declined; the nodes the fn built)."""
    prev = graph.nodes.prev(node)
    with graph.inserting_before(node):
        res = rule.call(graph, node, caps)
    new_nodes = graph.nodes.between(prev, node)
    if res is None or isinstance(res, str):
        return res, new_nodes
    vals = [res] if not isinstance(res, (list, tuple)) else list(res)
    if len(vals) != len(node.outputs):
        raise RewriteError(f"{name}: rule {rule.name} returned {len(vals)} values for {node!r} "
                           f"({len(node.outputs)} outputs)")
    if all(a is b for a, b in zip(vals, node.outputs)):
        return None, new_nodes  # "replace x by itself": not a rewrite
    for old, new in zip(node.outputs, vals):
        if not old.type.matches(new.type):
            raise RewriteError(f"{name}: rule {rule.name} replaced %{old.name}: {old.type} by %{new.name}: "
                               f"{new.type} at {node!r}; a rewrite must preserve types")
    return vals, new_nodes


class _StderrTrace(list):
    def append(self, event):
        print(event, file=sys.stderr)


def erase_dead(graph, node, on_erased_input=None) -> int:
    """Erase `node` if it is pure and unused, then its producers that become dead; returns the count.
    `on_erased_input(v)` is called for each input of an erased node, after the erase (v lost a use)."""
    n, stack = 0, [node]
    while stack:
        cur = stack.pop()
        if cur.graph is not graph or not _is_dead(graph, cur):
            continue
        inputs = list(cur.inputs)
        graph.erase(cur)
        n += 1
        stack.extend(v.producer for v in inputs if v.producer is not None)
        if on_erased_input is not None:
            for v in inputs:
                on_erased_input(v)
    return n


def _is_dead(graph, node) -> bool:
    return graph.is_dead(node)
