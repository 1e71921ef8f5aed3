"""The `torch` lowering of the KV state ops (ir/opset/state.py): caches that grow, and rings that slide,
without being copied every step.

`append` states. `torch.cat` copies the whole cache each step (O(length) per token). `append` returns a
view into a larger buffer with spare rows instead, so the next append writes only the new rows, in place.

`ring` states, `cache_window(cache_append(past, new)){window=W, sinks=S}` (StreamingLLM). The ring stays
a view [lo, end) of such a buffer in chronological order (S sink rows, then the last W rows), so the state
means what the IR says on every target. A step appends the new rows at `end` in place (attention reads
[lo, end + n): the ring and the new rows, no copy); `window_in_place` then writes the S sink rows (kept
aside once per buffer: they never change) just before the new window start and returns the view
[end + n - W - S, end + n). Per step and state: n + S rows written, nothing else copied. When the buffer's
end is reached, the ring moves to a new buffer with headroom >= its own rows (amortized O(1)); after a prompt
or chunk that left it in a buffer far larger than that, it moves to one of its own size at once.

Safety rules (tests/codegen/test_torch_kv.py):
1. An append writes only past the end of the view it was given, and only when that view ends where the
   buffer's newest view ends (`filled`): appending to a view shorter than that (a second branch from the
   same past) copies into a new buffer instead of overwriting rows another view shows. The decoder runtime,
   which owns the state, rolls an append state back with `truncate` (the rows past the new end become free
   for the next append: no copy).
2. The sink move overwrites S rows that the previous ring view (the `past` of the call) shows: a call that
   slides a ring CONSUMES the ring state it was given. Every view records the buffer's generation when it
   was made; a move starts a new generation, so a consumed view passed to a later call is an error, never
   a silent wrong answer. A caller that keeps a ring state across a call (the decoder's verify snapshot,
   two branches from one past) keeps `keep_state(t)`, a copy (Runner.keep_state). Tensors that are not
   views made here (a fresh zero state, a copy) are never written: they are copied into a new buffer.
3. The move must not change rows that this call still reads: the codegen (codegen/torch_fx.py) uses
   `window_in_place` only for a `cache_window` whose input (the cache_append output) is read by attention
   alone (through GQA repeat ops) and is no graph output, and emits it after every other node
   (`in_place_windows`); any other `cache_window` runs the reference (a copy).
"""
from __future__ import annotations
import torch

from ..ir.opset.state import cache_window
from .lowering import lowering

HEADROOM = 128      # spare rows of a new buffer, at least; it grows by 1.5x when full (rings: 2x their rows)
_GQA_REPEAT = ("unsqueeze", "expand", "reshape")   # HF repeat_kv between the cache and attention


def ring_capacity(keep: int) -> int:
    """Rows of a ring's own buffer: its `keep` = window + sinks rows and the next one, and as many again (at
    least HEADROOM) of room: single steps slide the ring through it, one copy of the sinks per step."""
    return keep + 1 + max(HEADROOM, keep + 1)


def ring_outgrown(buffer_rows: int, keep: int) -> bool:
    """Whether a ring of `keep` rows sits in a buffer of more than twice `ring_capacity(keep)` rows (a long
    prompt or chunk passed through it): then it moves to a buffer of its own size, one copy of its rows, so the
    call's other rows are not kept alive behind it for as many steps as they number. One rule for every target
    that keeps rings in place (here and codegen/tvm/target.py)."""
    return buffer_rows > 2 * ring_capacity(keep)


class StaleStateError(RuntimeError):
    pass


class _Buffer:
    __slots__ = ("data", "dim", "filled", "gen", "sinks")

    def __init__(self, data: torch.Tensor, dim: int, filled: int):
        self.data, self.dim, self.filled, self.gen = data, dim, filled, 0
        self.sinks = None       # a ring's sink rows, once it slides (they never change within one buffer)


def _view(buf: _Buffer, start: int, length: int) -> torch.Tensor:
    out = buf.data.narrow(buf.dim, start, length)
    out._slimgraph_kv = (buf, buf.gen, start, out.data_ptr())
    return out


def _owner(t: torch.Tensor, d: int):
    """(buffer, first row) when `t` is a view made here along dim `d`, else (None, 0). Raises StaleStateError
    for a view whose rows a later call changed (rule 2)."""
    tag = getattr(t, "_slimgraph_kv", None)
    if tag is None:
        return None, 0
    buf, gen, start, ptr = tag
    if gen != buf.gen:
        raise StaleStateError(
            "torch target: a ring KV state was passed again after a later call consumed it (the call that slid "
            "the ring moved its sink rows over rows this view shows, codegen/torch_kv.py rule 2); to run two "
            "calls from one state keep a copy first: runner.keep_state(state)")
    if d != buf.dim or ptr != t.data_ptr():     # not the view the tag was made for (set_(), ...): foreign
        return None, 0
    return buf, start


@lowering("torch", "cache_append")
def append(past: torch.Tensor, new: torch.Tensor, *, axis: int) -> torch.Tensor:
    """torch.cat((past, new), axis), returned as a view into a buffer with room for more rows."""
    dim = d = axis % past.dim()
    n_past, n = past.shape[d], new.shape[d]
    buf, start = _owner(past, d)
    if buf is None or not _can_extend(buf, start, new, d, n_past, n):
        if past.shape[:d] + past.shape[d + 1:] != new.shape[:d] + new.shape[d + 1:]:
            return torch.cat((past, new), dim)   # let torch report (or broadcast) the mismatch exactly as cat does
        rows = n_past + n
        shape = list(past.shape)
        shape[d] = rows + max(HEADROOM, rows if start else rows // 2)   # a ring (start > 0) slides: room for its rows
        data = torch.empty(shape, dtype=torch.result_type(past, new), device=past.device)
        data.narrow(d, 0, n_past).copy_(past)
        buf, start = _Buffer(data, d, n_past), 0
    buf.data.narrow(d, buf.filled, n).copy_(new)
    buf.filled += n
    return _view(buf, start, n_past + n)


def _can_extend(buf, start, new, d, n_past, n) -> bool:
    data = buf.data
    return (buf.filled == start + n_past and buf.filled + n <= data.shape[d] and new.dtype == data.dtype
            and new.device == data.device and new.shape[:d] + new.shape[d + 1:] == data.shape[:d] + data.shape[d + 1:])


def window_in_place(x: torch.Tensor, *, axis: int, window: int, sinks: int) -> torch.Tensor:
    """`cache_window(x)` (the first `sinks` and the last `window` rows along `axis`) as a view of x's buffer:
    the sink rows are copied to sit just before the last `window` rows (module docstring, rules 2-3). The
    caller promises that nothing reads x afterwards. A tensor that is not the buffer's newest view: a copy."""
    d = axis % x.dim()
    rows = x.shape[d]
    if rows <= window + sinks:
        return x
    buf, start = _owner(x, d)
    if buf is None or buf.filled != start + rows:
        return cache_window(x, axis=axis, window=window, sinks=sinks)
    lo = start + rows - window - sinks
    keep = window + sinks
    if ring_outgrown(buf.data.shape[d], keep):     # a long prompt's (or chunk's) buffer: the ring moves out
        shape = list(x.shape)
        shape[d] = ring_capacity(keep)
        data = torch.empty(shape, dtype=x.dtype, device=x.device)
        data.narrow(d, 0, sinks).copy_(x.narrow(d, 0, sinks))
        data.narrow(d, sinks, window).copy_(x.narrow(d, rows - window, window))
        return _view(_Buffer(data, d, keep), 0, keep)
    if sinks:
        if buf.sinks is None or buf.sinks.shape[d] != sinks:
            buf.sinks = buf.data.narrow(d, start, sinks).clone()
        buf.data.narrow(d, lo, sinks).copy_(buf.sinks)
        buf.gen += 1                # views made before now may show overwritten rows (rule 2)
    return _view(buf, lo, keep)


def ring_attention(graph) -> set[int]:
    """ids of the attention nodes whose keys are a ring state's rows and the new ones: k is (through GQA repeat
    ops) a `cache_append` output that a `cache_window` slides."""
    def ring(v) -> bool:
        n = v.producer
        while n is not None and n.op in _GQA_REPEAT:
            n = n.inputs[0].producer
        return n is not None and n.op == "cache_append" and any(u.op == "cache_window" for u in n.output.users)

    return {id(n) for n in graph.nodes if n.op == "attention" and ring(n.inputs[1])}


def in_place_windows(graph) -> set[int]:
    """ids of the `cache_window` nodes that `window_in_place` may compute when emitted after every other
    node (rule 3): input produced by cache_append and read otherwise only by attention ops (through GQA
    repeat ops), none of them a graph output; its own output read by no node (a graph/state output)."""
    outputs = {id(v) for v in graph.outputs}

    def only_attention(v, skip) -> bool:
        if id(v) in outputs:
            return False
        return all(u is skip or u.op == "attention" or
                   (u.op in _GQA_REPEAT and only_attention(u.output, None)) for u in v.users)

    return {id(n) for n in graph.nodes
            if n.op == "cache_window" and n.inputs[0].producer is not None
            and n.inputs[0].producer.op == "cache_append" and not n.output.users and only_attention(n.inputs[0], n)}


def keep_state(t: torch.Tensor) -> torch.Tensor:
    """`t`, safe to pass to or read after later calls: a copy when `t` is a view of a buffer here (rule 2)."""
    if getattr(t, "_slimgraph_kv", None) is None:
        return t
    _owner(t, -1)                   # a consumed view: StaleStateError, not a copy of overwritten rows
    return t.clone()


def truncate(t: torch.Tensor, axis: int, length: int) -> torch.Tensor:
    """`t` narrowed to `length` rows along `axis`; if `t` views an append buffer, the rows past `length`
    become free (the caller promises not to read the longer view again)."""
    d = axis % t.dim()
    buf, start = _owner(t, d)
    if buf is not None and buf.filled == start + t.shape[d]:
        buf.filled = start + length
        return _view(buf, start, length)
    return t.narrow(d, 0, length)
