"""Turn ONNX Runtime's session-creation errors ("Could not find an implementation for Sigmoid(13)
node with name 'n_Sigmoid_3'", type-binding failures) into errors that name the IR op and the dtype,
so an `optimize(..., target="onnx")` of a bf16 model fails at optimize time saying what to do."""
from __future__ import annotations
import re

from .onnx_export import OnnxExportError

_NODE = [re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'"),
         re.compile(r"Optype \((\w+)\) bound to different types.*in node \(([^)]*)\)")]


def explain_session_error(model, err: Exception) -> Exception:
    """An OnnxExportError naming the ONNX op, the IR op it lowers and the dtypes, or `err` itself."""
    text = str(err)
    for pat in _NODE:
        m = pat.search(text)
        if not m:
            continue
        op, name = m.group(1), m.group(m.lastindex)
        node = next((n for n in model.graph.node if n.name == name), None)
        origin = node.doc_string if node is not None and node.doc_string else "an IR op"
        low = [d for d in ("bf16", "f16") if d in origin]
        if pat is _NODE[1]:
            hint = "its lowering mixes dtypes there (an exporter gap): use target='torch'"
        else:
            hint = (f"ONNX Runtime's CPU provider has no {low[0]} kernel for it: use target='torch', or cast the "
                    f"model to f32" if low else "ONNX Runtime has no kernel for these dtypes: use target='torch'")
        return OnnxExportError(f"target 'onnx': ONNX Runtime cannot run ONNX {op} (node {name!r}, lowered from "
                               f"{origin}); {hint}. ORT said: {text.splitlines()[0][:200]}")
    return err
