"""Stable, readable text form of a graph; `parser.parse_graph` reads it back exactly.

    graph @main(%x: f32[batch,16]) {
      weight @fc.weight: f32[8,16]
      %linear: f32[batch,8] = linear(%x, @fc.weight)
      %y: f32[batch,8] = gelu(%linear) {approximate="tanh"}
      return %y
    }
"""
import json

from .registry import get_op


def format_attr_value(v) -> str:
    return json.dumps(v, separators=(",", ":"))


def format_attrs(op: str, attrs: dict) -> str:
    try:
        schema = get_op(op).attrs
    except KeyError:  # an unknown op must still print (the verifier reports it with this text)
        schema = {}
    shown = {k: v for k, v in attrs.items() if k not in schema or v != schema[k].default}
    if not shown:
        return ""
    return " {" + ", ".join(f"{k}={format_attr_value(v)}" for k, v in shown.items()) + "}"


def format_node(node) -> str:
    outs = ", ".join(f"%{o.name}: {o.type}" for o in node.outputs)
    args = ", ".join(v.ref() for v in node.inputs)
    return f"{outs} = {node.op}({args}){format_attrs(node.op, node.attrs)}"


def print_graph(graph) -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph @{graph.name}({ins}) {{"]
    lines += [f"  weight @{w.name}: {w.type}" for w in graph.weights.values()]
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines.append("  return " + ", ".join(v.ref() for v in graph.outputs))
    lines += [f"  {st.format()}" for st in graph.states]
    lines.append("}")
    return "\n".join(lines) + "\n"
