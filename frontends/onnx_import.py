"""ONNX -> slimgraph IR.

    graph = import_onnx("model.onnx")          # or bytes, or an onnx.ModelProto

Each ONNX node is lowered by a handler declared in `onnx_ops.ONNX_OPS` (the supported-op
list). Values known at import time — initializers, Constant nodes and, above all, shapes —
are kept as numpy arrays (`Known`) instead of graph values. A shape with symbolic dims is an
object array of sympy expressions, so `Shape -> Gather -> Concat -> Reshape` folds into a
`reshape` whose attribute holds `seq`-style dims; a known value becomes a graph value only
when a run-time op consumes it. Input dims named by `dim_param` become symbolic dims.
"""
from __future__ import annotations
import os
import re
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from ..ir import symbolic as S
from ..ir.graph import Graph, Value
from ..ir.types import TensorType

MIN_OPSET = 13        # what the op handlers implement
MIN_SOURCE_OPSET = 7  # older models are up-converted to MIN_OPSET on import (upgrade_opset)
INSTALL_HINT = "pip install 'slimgraph[onnx]'"

# ONNX TensorProto.DataType -> IR dtype name (the IR has no u16/u32/u64/f8/string/complex)
ONNX_DTYPES = {1: "f32", 2: "u8", 3: "i8", 5: "i16", 6: "i32", 7: "i64", 9: "bool", 10: "f16", 11: "f64",
               16: "bf16"}
IR_TO_ONNX = {v: k for k, v in ONNX_DTYPES.items()}


class OnnxImportError(ValueError):
    pass


class UnsupportedOnnxFeature(OnnxImportError):
    """The op is supported but this use of it is not: an attribute value (3-d or ceil_mode
    pooling, a Pad mode, training mode, attention windows...), an optional output, or a parameter
    computed from run-time data. Part of the importer's declaration of what it supports: the
    conformance runner counts such a case as unsupported, every other import error as a failure."""


class NeedsConstantError(UnsupportedOnnxFeature):
    """An op parameter (axes, pads, a shape...) is computed from data; `name` is the ONNX value.
    If it is a graph input, `import_onnx(model, bind={name: array})` specializes the model on it."""

    def __init__(self, msg: str, name: str):
        super().__init__(msg)
        self.name = name


def require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX support needs the 'onnx' package: {INSTALL_HINT}") from e
    return onnx


@dataclass
class Known:
    """A value known at import time: numeric, or an object array of sympy dims (shapes)."""
    array: np.ndarray
    dtype: str

    @property
    def symbolic(self) -> bool:
        return self.array.dtype == object

    def dims(self) -> list:
        return [S.canon(sympy.sympify(x)) if self.symbolic else int(x) for x in self.array.reshape(-1)]


def ir_dtype(elem_type: int, where: str) -> str:
    if elem_type not in ONNX_DTYPES:
        onnx = require_onnx()
        name = onnx.helper.tensor_dtype_to_string(elem_type) if elem_type else "undefined"
        raise OnnxImportError(f"{where}: dtype {name} is not supported; "
                              f"supported: {', '.join(sorted(ONNX_DTYPES.values()))}")
    return ONNX_DTYPES[elem_type]


def sym_dim(d):
    """IR dim (int or expression string) -> sympy expression for import-time arithmetic."""
    if isinstance(d, int):
        return sympy.Integer(d)
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", d)
    return sympy.sympify(d, locals={n: sympy.Symbol(n, integer=True) for n in names
                                    if n not in ("floor", "ceiling", "Max", "Min", "Mod")})


def shape_known(shape) -> Known:
    if all(isinstance(d, int) for d in shape):
        return Known(np.array(shape, dtype=np.int64), "i64")
    return Known(np.array([sym_dim(d) for d in shape], dtype=object), "i64")


class Importer:
    """Holds the graph under construction and the ONNX-name -> Value|Known environment."""

    def __init__(self, model):
        self.model = model
        self.opset = _default_opset(model)
        self.graph = Graph(_clean(model.graph.name or "main"))
        self.env: dict[str, Value | Known] = {}
        self._materialized: dict[str, Value] = {}  # known values that run-time ops consumed
        # ONNX names of run-time floats that are a Cast of shape arithmetic (YOLO's and DETR's
        # `arange(float(w))`): the value stays a run-time op, but Range still reads its dims here
        self.float_of_dims: dict[str, Known] = {}
        self.node = None  # the ONNX node being lowered (for error messages)
        self.producer: dict = {}  # ONNX value name -> the node that made it (If's refusal traces its condition)

    # ---- errors -------------------------------------------------------------------------------------
    def error(self, msg: str) -> OnnxImportError:
        n = self.node
        where = f"node {n.name or n.output[0]!r} ({n.op_type})" if n is not None else "model"
        return OnnxImportError(f"{where}: {msg}")

    def unsupported(self, msg: str) -> UnsupportedOnnxFeature:
        return UnsupportedOnnxFeature(str(self.error(msg)))

    # ---- reading inputs -----------------------------------------------------------------------------
    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def get(self, i: int) -> Value | Known:
        name = self.node.input[i]
        if name not in self.env:
            raise self.error(f"input {i} {name!r} is neither a graph input, an initializer nor an "
                             f"earlier node's output (missing initializer?)")
        return self.env[name]

    def known(self, i: int) -> Known | None:
        v = self.get(i) if self.has(i) else None
        return v if isinstance(v, Known) else None

    def dims(self, i: int, what: str) -> list:
        """Input i as a list of (possibly symbolic) ints; it must be known at import time."""
        k = self.known(i)
        if k is None and self.has(i) and self.node.input[i] in self.float_of_dims:
            k = self.float_of_dims[self.node.input[i]]
        if k is None:
            name = self.node.input[i]
            raise NeedsConstantError(str(self.error(
                f"{what} (input {i}, {name!r}) must be a constant or computed from shapes; data-dependent "
                f"{what} is not supported (bind a graph input with import_onnx(..., bind={{name: array}}))")), name)
        return k.dims()

    def scalar(self, i: int, what: str):
        """Input i as a Python number known at import time."""
        k = self.known(i)
        if k is None or k.symbolic or k.array.size != 1:
            self.dims(i, what)  # raises NeedsConstantError naming the input
            raise self.error(f"{what} (input {i}) must be a single constant number")
        return k.array.reshape(-1)[0].item()

    def value(self, i: int) -> Value:
        name, v = self.node.input[i], self.get(i)
        if isinstance(v, Value):
            return v
        if name not in self._materialized:  # one graph weight per initializer, however many users
            self._materialized[name] = self.as_value(v, name)
        return self._materialized[name]

    def as_value(self, v: Value | Known, hint: str = "const") -> Value:
        if isinstance(v, Value):
            return v
        if v.symbolic:
            dims = v.dims()
            out = (self.graph.op("dim_value", expr=dims[0]) if v.array.ndim == 0
                   else self.graph.op("reshape", self.graph.op("shape_tensor", dims=dims),
                                      shape=list(v.array.shape)))
            return out if v.dtype == "i64" else self.graph.op("cast", out, dtype=v.dtype)
        arr = v.array if v.array.flags.writeable and v.array.flags.c_contiguous else np.array(v.array)
        if arr.dtype.name == "bfloat16":  # ml_dtypes bf16: torch reads it through int16
            t = torch.from_numpy(np.array(arr).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(arr).to(_torch_dtype(v.dtype))
        return self.graph.add_weight(self.graph.fresh_name(_clean(hint)), t)

    def type(self, i: int) -> TensorType:
        v = self.get(i)
        if isinstance(v, Value):
            return v.type
        return TensorType(v.dtype, v.array.shape)

    def op(self, name: str, *inputs: Value, **attrs):
        try:
            return self.graph.op(name, *inputs, **attrs)
        except (TypeError, ValueError) as e:
            raise self.error(f"lowering to IR op {name} failed: {e}") from e


def _torch_dtype(name):
    from ..ir.dtypes import to_torch
    return to_torch(name)


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "v"


def _opset_version(model) -> int | None:
    version = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):  # other domains are checked per node, where one is used
            version = imp.version
    return version


def _default_opset(model) -> int:
    version = _opset_version(model)
    if version is None:
        if not any(n.domain in ("", "ai.onnx") for n in model.graph.node):
            return MIN_OPSET  # a model using other domains only (their ops are checked per node)
        raise OnnxImportError("model does not import the default ONNX opset")
    if version < MIN_OPSET:
        raise OnnxImportError(f"model uses ONNX opset {version}; slimgraph imports opset >= {MIN_OPSET}. "
                              f"Convert it first: onnx.version_converter.convert_version(model, {MIN_OPSET})")
    return version


def upgrade_opset(model, notes: list | None = None):
    """A model below opset MIN_OPSET, converted with onnx.version_converter (ONNX's own adapters:
    Split/Squeeze/Unsqueeze/ReduceSum attributes become inputs, Resize/Upsample are rewritten, ...).
    Appends a note saying so to `notes`. Raises OnnxImportError naming the opset and the converter's
    error when an op has no adapter (e.g. opset-1 models, Upsample before opset 7)."""
    onnx = require_onnx()
    version = _opset_version(model)
    if version is None or version >= MIN_OPSET:
        return model
    from onnx import version_converter
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError/ConvertError with its reason
        raise UnsupportedOnnxFeature(f"model uses ONNX opset {version}; slimgraph imports opset >= {MIN_OPSET} and "
                              f"onnx.version_converter could not convert it: {str(e).splitlines()[0]}") from e
    if notes is not None:
        notes.append(f"ONNX model converted from opset {version} to opset {MIN_OPSET} with onnx.version_converter "
                     f"(onnx {onnx.__version__})")
    return converted


def load_model(src, base_dir: str | None = None):
    """A ModelProto from a path, bytes or ModelProto, with external data loaded."""
    onnx = require_onnx()
    if isinstance(src, onnx.ModelProto):
        model = src
        if base_dir:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, base_dir)
        return model
    try:
        if isinstance(src, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(src))
        else:
            path = os.fspath(src)
            if not os.path.exists(path):
                raise OnnxImportError(f"{path}: no such ONNX file")
            model = onnx.load(path, load_external_data=True)
    except OnnxImportError:
        raise
    except Exception as e:  # protobuf DecodeError, missing external-data file, ...
        what = src if isinstance(src, (str, os.PathLike)) else "model bytes"
        raise OnnxImportError(f"{what}: not a readable ONNX model (truncated or corrupt file?): "
                              f"{type(e).__name__}: {e}") from e
    if not model.graph.node and not model.graph.output:
        raise OnnxImportError("model has an empty graph (truncated or corrupt file?)")
    return model


def import_onnx(src, base_dir: str | None = None, bind: dict | None = None, notes: list | None = None,
                dims: dict | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a slimgraph IR graph.

    `bind` maps graph-input names to arrays: those inputs become constants (specialization),
    which lets data-dependent parameters such as Slice starts or Reshape shapes fold.
    `dims` maps symbolic input dims to sizes ({"sequence": 512}; a dim the file leaves unnamed is
    `<input>_dim<i>`), as ONNX Runtime's free-dimension overrides do: shape tests on them (an If on
    `x.size(2) == 1`) then fold.
    Models below opset 13 are converted first (`upgrade_opset`); what the importer did on the
    user's behalf (that conversion) is appended to `notes` when given, else warned."""
    model = load_model(src, base_dir)
    try:
        return _import(model, bind, notes, dims)
    except OnnxImportError as e:  # name the file: optimize(path) errors say which model failed
        if isinstance(src, (str, os.PathLike)) and e.args and not str(e.args[0]).startswith(os.fspath(src)):
            e.args = (f"{os.fspath(src)}: {e.args[0]}",) + e.args[1:]
        raise


def _import(model, bind, notes, dims=None) -> Graph:
    onnx = require_onnx()
    from .onnx_ops import ONNX_OPS, lower_node
    own_notes = [] if notes is None else notes
    model = upgrade_opset(model, own_notes)
    if notes is None:
        import warnings
        for n in own_notes:
            warnings.warn(n, stacklevel=3)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is advisory; the IR infers its own types
        pass
    imp = Importer(model)
    g = imp.graph
    for init in model.graph.initializer:
        imp.env[init.name] = _initializer(init)
    for name, arr in (bind or {}).items():
        vi = next((v for v in model.graph.input if v.name == name), None)
        if vi is None:
            raise OnnxImportError(f"bind: {name!r} is not a graph input")
        imp.env[name] = Known(np.asarray(arr), ir_dtype(vi.type.tensor_type.elem_type, f"graph input {name!r}"))
    for vi in model.graph.input:
        if vi.name in imp.env:  # an initializer that is also listed as an (overridable) input
            continue
        imp.env[vi.name] = g.add_input(g.fresh_name(_clean(vi.name)), value_type(vi, f"graph input {vi.name!r}", dims))
    unused = set(dims or ()) - {d for v in g.inputs for d in v.type.shape if isinstance(d, str)} - \
        {d for vi in model.graph.input for d in _dim_names(vi)} - \
        {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    if unused:
        named = {vi.name: _dim_names(vi) for vi in model.graph.input}
        raise OnnxImportError(f"dims: {sorted(unused)} name no symbolic dim of a graph input; the inputs' symbolic "
                              f"dims are {named}")
    for node in model.graph.node:
        imp.node = node
        imp.producer.update({o: node for o in node.output if o})
        if node.domain not in ("", "ai.onnx") and (node.domain, node.op_type) not in ONNX_OPS:
            raise imp.error(f"operator domain {node.domain!r} is not supported")
        try:
            outs = lower_node(imp, node)
        except OnnxImportError:
            raise
        except Exception as e:  # noqa: BLE001 - a handler's own bug: say which node and op it was lowering
            raise imp.error(f"internal error while lowering this node ({type(e).__name__}: {e}); please report "
                            f"it with the model") from e
        for name, v in zip(node.output, outs):
            if name:
                imp.env[name] = v
    imp.node = None
    g.set_outputs([_output(imp, vi) for vi in model.graph.output])
    return g


def _output(imp: Importer, vi) -> Value:
    if vi.name not in imp.env:
        raise OnnxImportError(f"graph output {vi.name!r} is produced by no node")
    v = imp.as_value(imp.env[vi.name], vi.name)
    want = vi.type.tensor_type.elem_type
    if want in ONNX_DTYPES and ONNX_DTYPES[want] != v.type.dtype:  # torch promotion differs from ONNX
        v = imp.graph.op("cast", v, dtype=ONNX_DTYPES[want])
    return v


def _dim_names(vi) -> list:
    """The symbolic dims of a graph input as the importer names them (value_type)."""
    try:
        return [d for d in value_type(vi, "").shape if isinstance(d, str)]
    except OnnxImportError:
        return []


def value_type(vi, where: str, dims: dict | None = None) -> TensorType:
    if not vi.type.HasField("tensor_type"):
        raise OnnxImportError(f"{where}: only tensor values are supported (got {vi.type.WhichOneof('value')})")
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise OnnxImportError(f"{where}: the model gives no rank; slimgraph needs ranked inputs")
    shape = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value >= 0:  # -1 (some exporters' "unknown") is a symbol
            shape.append(int(d.dim_value))
        else:
            named = d.dim_param if re.search(r"[A-Za-z0-9]", d.dim_param or "") and d.dim_param != "-1" else ""
            sym = _clean_symbol(named or f"{vi.name}_dim{i}")  # "?", "-1", "": a fresh symbol
            fixed = (dims or {}).get(sym, (dims or {}).get(d.dim_param))
            shape.append(sym if fixed is None else int(fixed))
    return TensorType(ir_dtype(tt.elem_type, where), tuple(shape))


def _clean_symbol(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return name if re.match(r"[A-Za-z_]", name) else f"d_{name}"


def _initializer(t) -> Known:
    from onnx import numpy_helper
    dtype = ir_dtype(t.data_type, f"initializer {t.name!r}")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - e.g. external data file missing
        raise OnnxImportError(f"initializer {t.name!r} cannot be read: {e}") from e
    return Known(np.asarray(arr), dtype)


def supported_ops() -> list[str]:
    from .onnx_ops import ONNX_OPS
    return sorted(k if isinstance(k, str) else f"{k[0]}::{k[1]}" for k in ONNX_OPS)
