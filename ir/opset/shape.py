"""Shape and data-movement ops. Shape attributes may hold symbolic dims."""
import torch

from .. import symbolic as S
from ..registry import Attr, register_op
from ..types import TensorType
from . import infer as I


def _reshape_type(ts, a):
    x, shape = ts[0], list(a["shape"])
    if shape.count(-1) > 1:
        raise I.ShapeError("reshape: at most one -1")
    if -1 in shape:
        known = S.product(d for d in shape if d != -1)
        shape[shape.index(-1)] = S.floordiv(x.numel(), known)
    return x.with_shape(shape)


@register_op("reshape", inputs="x", attrs={"shape": Attr("dims")}, infer=_reshape_type, traits="view")
def reshape(x, shape):
    return x.reshape(shape)


@register_op("permute", inputs="x", attrs={"dims": Attr("ints")},
             infer=lambda ts, a: ts[0].with_shape(tuple(ts[0].shape[I.norm_dim(d, ts[0].rank)] for d in a["dims"])), traits="view")
def permute(x, dims):
    return x.permute(dims)


def _expand_type(ts, a):
    x, shape = ts[0], list(a["shape"])
    lead = len(shape) - x.rank
    return x.with_shape(tuple(x.shape[i - lead] if d == -1 else d for i, d in enumerate(shape)))


@register_op("expand", inputs="x", attrs={"shape": Attr("dims")}, infer=_expand_type, traits="view")
def expand(x, shape):
    return x.expand(shape)


END_SENTINEL = 2 ** 24   # a slice end at least this large, over a symbolic dim, means "to the end"


def _slice_len(size, start, end, step):
    if all(isinstance(v, int) for v in (size, start, end)):
        s, e, _ = slice(start, end, step).indices(size)
        return max(0, -(-(e - s) // step))
    # Symbolic: assume in-range bounds (torch.export guarantees them); an end of 2^24 or more is an exporter's
    # "to the end" (INT64_MAX from torch and spox, INT32_MAX or 1e9 from tf2onnx), not a length to keep
    end = size if (isinstance(end, int) and end >= END_SENTINEL) else end
    if isinstance(start, int) and start < 0:
        start = S.add(size, start)
    if isinstance(end, int) and end < 0:
        end = S.add(size, end)
    n = S.canon(f"({end})-({start})")
    return n if step == 1 else S.canon(f"ceiling(({n})/{step})")


def _slice_type(ts, a):
    x = ts[0]
    d = I.norm_dim(a["dim"], x.rank)
    shape = list(x.shape)
    shape[d] = _slice_len(x.shape[d], a["start"], a["end"], a["step"])
    return x.with_shape(shape)


@register_op("slice", inputs="x", attrs={"dim": Attr("int"), "start": Attr("dim", 0),
                                         "end": Attr("dim", 2 ** 63 - 1), "step": Attr("int", 1)},
             infer=_slice_type, traits="view")
def slice_(x, dim, start, end, step):
    idx = [slice(None)] * x.dim()
    idx[dim] = slice(start, end, step)
    return x[tuple(idx)]


@register_op("select", inputs="x", attrs={"dim": Attr("int"), "index": Attr("dim")},
             infer=lambda ts, a: ts[0].with_shape(
                 tuple(d for i, d in enumerate(ts[0].shape) if i != I.norm_dim(a["dim"], ts[0].rank))), traits="view")
def select(x, dim, index):
    return x.select(dim, index)


def _concat_type(ts, a):
    ts = [t for t in ts if not (t.rank == 1 and t.shape[0] == 0)] or ts[:1]  # torch skips empty 1-d
    d = I.norm_dim(a["dim"], ts[0].rank)
    shape = list(ts[0].shape)
    shape[d] = 0
    for t in ts:
        shape[d] = S.add(shape[d], t.shape[d])
    from ..dtypes import promote
    return TensorType(promote(*[(t.dtype, 1) for t in ts]), shape)


@register_op("concat", inputs="xs*", attrs={"dim": Attr("int")}, infer=_concat_type, traits="view")
def concat(*xs, dim):
    return torch.cat(xs, dim)


def _split_type(ts, a):
    x = ts[0]
    d = I.norm_dim(a["dim"], x.rank)
    return [x.with_shape(x.shape[:d] + (s,) + x.shape[d + 1:]) for s in a["sizes"]]


@register_op("split", inputs="x", attrs={"dim": Attr("int"), "sizes": Attr("dims")}, infer=_split_type, traits="view")
def split(x, dim, sizes):
    return tuple(torch.split(x, list(sizes), dim))


def _unsqueeze_type(ts, a):
    x = ts[0]
    d = a["dim"] % (x.rank + 1)
    return x.with_shape(x.shape[:d] + (1,) + x.shape[d:])


@register_op("unsqueeze", inputs="x", attrs={"dim": Attr("int")}, infer=_unsqueeze_type, traits="view")
def unsqueeze(x, dim):
    return x.unsqueeze(dim)


def _squeeze_type(ts, a):
    x = ts[0]
    dims = {I.norm_dim(d, x.rank) for d in a["dims"]}
    return x.with_shape(tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1)))


@register_op("squeeze", inputs="x", attrs={"dims": Attr("ints")}, infer=_squeeze_type, traits="view")
def squeeze(x, dims):
    return x.squeeze(tuple(dims))


@register_op("gather", inputs="x index", attrs={"dim": Attr("int")},
             infer=lambda ts, a: ts[1].with_dtype(ts[0].dtype))
def gather(x, index, dim):
    return torch.gather(x, dim, index)


def _index_select_type(ts, a):
    x, idx = ts
    d = I.norm_dim(a["dim"], x.rank)
    return x.with_shape(x.shape[:d] + idx.shape + x.shape[d + 1:])


@register_op("index_select", inputs="x index", attrs={"dim": Attr("int")}, infer=_index_select_type)
def index_select(x, index, dim):
    """x indexed along `dim` by an integer tensor of any shape (like x[:, idx] for dim=1)."""
    idx = [slice(None)] * x.dim()
    idx[dim] = index
    return x[tuple(idx)]


@register_op("tril", inputs="x", attrs={"diagonal": Attr("int", 0)}, infer=I.same)
def tril(x, diagonal):
    return torch.tril(x, diagonal)


@register_op("triu", inputs="x", attrs={"diagonal": Attr("int", 0)}, infer=I.same)
def triu(x, diagonal):
    return torch.triu(x, diagonal)


@register_op("cumsum", inputs="x", attrs={"dim": Attr("int"), "dtype": Attr("dtype", None)},
             infer=lambda ts, a: ts[0].with_dtype(a["dtype"] or ("i64" if ts[0].dtype in ("bool", "i8", "u8", "i16", "i32") else ts[0].dtype)))
def cumsum(x, dim, dtype):
    from ..dtypes import to_torch
    return torch.cumsum(x, dim, dtype=to_torch(dtype) if dtype else None)


@register_op("flip", inputs="x", attrs={"dims": Attr("ints")}, infer=I.same, traits="view")
def flip(x, dims):
    return torch.flip(x, dims)


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_type(ts, a):
    if a["mode"] not in PAD_MODES:
        raise I.ShapeError(f"pad: mode {a['mode']!r} is not one of {', '.join(PAD_MODES)}")
    return ts[0].with_shape(_pad_shape(ts[0].shape, a["pads"]))


@register_op("pad", inputs="x", attrs={"pads": Attr("ints"), "value": Attr("float", 0.0),
                                       "mode": Attr("str", "constant")}, infer=_pad_type)
def pad(x, pads, value, mode="constant"):
    """Padding; `pads` as torch.nn.functional.pad (last dim first, (before, after) pairs; negative
    crops). `mode` as ONNX Pad: constant (`value`), reflect (mirror without the edge), edge (repeat
    the edge), wrap (circular)."""
    if mode == "constant":
        return torch.nn.functional.pad(x, pads, value=value)
    for i in range(len(pads) // 2):  # per dim, gather the padded positions' source indices
        d = x.dim() - 1 - i
        n, b, e = x.shape[d], pads[2 * i], pads[2 * i + 1]
        if b == 0 and e == 0:
            continue
        j = torch.arange(-b, n + e)
        if mode == "edge":
            j = j.clamp(0, n - 1)
        elif mode == "wrap":
            j = j % n
        else:
            if n == 1:
                j = torch.zeros_like(j)
            else:
                period = 2 * (n - 1)
                j = j.abs() % period
                j = torch.where(j >= n, period - j, j)
        x = x.index_select(d, j)
    return x


def _pad_shape(shape, pads):
    shape = list(shape)
    for i in range(len(pads) // 2):
        d = len(shape) - 1 - i
        shape[d] = S.add(shape[d], pads[2 * i] + pads[2 * i + 1])
    return shape


def _index_type(ts, a):
    x, idx, axes = ts[0], ts[1:], [I.norm_dim(d, ts[0].rank) for d in a["axes"]]
    if len(idx) != len(axes) or not axes:
        raise I.ShapeError(f"index: {len(idx)} index tensors for axes {a['axes']}")
    picked = I.broadcast(*[t.shape for t in idx])
    if axes == list(range(axes[0], axes[0] + len(axes))):  # adjacent: result dims go in place
        shape = x.shape[:axes[0]] + picked + x.shape[axes[-1] + 1:]
    else:  # torch/numpy rule: separated advanced indices move the result dims to the front
        shape = picked + tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return x.with_shape(shape)


@register_op("index", inputs="x indices*", attrs={"axes": Attr("ints")}, infer=_index_type)
def index(x, *indices, axes):
    """Advanced indexing x[..., i0, ..., i1, ...]: integer tensor `indices[k]` indexes dim `axes[k]`
    (torch's `x[idx]` / aten.index.Tensor with the None entries left out)."""
    idx = [slice(None)] * x.dim()
    for ax, t in zip(axes, indices):
        idx[ax] = t
    return x[tuple(idx)]


# ---- scatter ---------------------------------------------------------------------------------------
SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")
_TORCH_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter_type(ts, a):
    if a["reduce"] not in SCATTER_REDUCTIONS:
        raise I.ShapeError(f"scatter: reduction {a['reduce']!r} is not one of {', '.join(SCATTER_REDUCTIONS)}")
    if ts[1].dtype not in ("i32", "i64"):
        raise I.ShapeError(f"scatter: indices must be i32/i64, got {ts[1]}")
    return ts[0]


@register_op("scatter_nd", inputs="x indices updates", attrs={"reduce": Attr("str", "none")}, infer=_scatter_type)
def scatter_nd(x, indices, updates, reduce):
    """ONNX ScatterND: indices [..., k] address slices x[i0..ik-1]; updates [..., *x.shape[k:]].
    Negative indices count from the end."""
    k = indices.shape[-1]
    idx = indices.reshape(-1, k).long()
    idx = torch.where(idx < 0, idx + torch.tensor(x.shape[:k], dtype=torch.long), idx)
    upd = updates.reshape((idx.shape[0],) + tuple(x.shape[k:]))
    out = x.clone()
    where = tuple(idx.t())
    if reduce == "none":
        out[where] = upd
    elif reduce == "add":
        out.index_put_(where, upd, accumulate=True)
    else:
        for j in range(idx.shape[0]):
            at = tuple(idx[j].tolist())
            cur = out[at]
            out[at] = cur * upd[j] if reduce == "mul" else (torch.maximum(cur, upd[j]) if reduce == "max"
                                                            else torch.minimum(cur, upd[j]))
    return out
