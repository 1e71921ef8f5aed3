"""The `cpu` target's build, load and host: graph -> Relax -> LLVM shared library -> Relax VM.

    products = build(graph)          # {"cpu_module.so": library bytes, "cpu_module.relax.py": Relax source};
                                     # meta["weights"]: main's parameters after the inputs (module.py)
    runner = load(graph, products)   # a TvmRunner: (*tensors) -> list[Tensor]; no codegen
    host()                           # {"slimgraph", "tvm", "llvm_target", "codegen"}: what the library depends on

Weights are parameters of the compiled `main`, not constants inside it: the library is code only and
the runner passes the graph's own tensors (zero-copy through DLPack), so neither the library nor an
artifact holds a second copy of the weights. Weights a lowering prepacks (f32 linear panels) are packed
again at load by the same hook (`bind_weights`): in memory, not on disk, they exist twice. Hence the build
cache key is the graph text (ops, attrs, types, weight names and shapes, literal constants; not weight
values), this target's codegen sources and the host: <cache root>/tvm-cpu/<sha256>.so (the root:
`$SLIMGRAPH_CACHE_DIR`, else `$XDG_CACHE_HOME/slimgraph`, else ~/.cache/slimgraph; slimgraph/cache.py).
A second build of the same graph reads the library back instead of compiling (seconds instead of a minute).

The LLVM target is this machine's CPU (`llvm_get_system_cpu`, e.g. znver4), so a library built here
may use instructions another CPU lacks: `host()` names the CPU and `slimgraph.load` rebuilds elsewhere.
"""
from __future__ import annotations
import functools
import hashlib
import json
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from ...cache import atomic_write, cache_dir as _cache_dir
from ..contract import Products, ProductsError, Runner
from ..torch_kv import HEADROOM, _Buffer, _owner, _view, keep_state, ring_capacity, ring_outgrown, truncate

LIBRARY, SOURCE = "cpu_module.so", "cpu_module.relax.py"


def host() -> dict:
    """What a library depends on besides the graph: slimgraph, TVM, the LLVM CPU and this codegen's sources (a
    library's calling convention follows them: an artifact built by other sources is rebuilt, never misread)."""
    import tvm
    import slimgraph
    # "codegen": the library's calling convention follows these sources (main's parameters: KV buffers and
    # kv_lengths, prepacked weights), and slimgraph's version does not change with each of their edits
    return {"slimgraph": slimgraph.__version__, "tvm": tvm.__version__,
            "llvm_target": json.dumps(_target_spec(), sort_keys=True), "codegen": _codegen_digest()[:16]}


def _target_spec() -> dict:
    import tvm
    # not the thread count: the library runs on any number of TVM threads (TVM_NUM_THREADS), so a process
    # with other torch settings must not see "another host" and rebuild
    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def cache_dir() -> Path:
    return _cache_dir("tvm-cpu")


@functools.lru_cache(maxsize=1)
def _codegen_digest() -> str:
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def cache_key(graph) -> str:
    """sha256 of the graph text, this codegen's sources and the host: what the library depends on."""
    from ...ir.printer import print_graph
    h = hashlib.sha256()
    for part in (print_graph(graph), _codegen_digest(), json.dumps(host(), sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def compile_module(mod):
    """IRModule -> tvm Executable for this CPU (codegen/tvm/pipeline.py's schedules)."""
    import tvm
    from .pipeline import relax_pipeline
    target = tvm.target.Target(_target_spec())
    return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target))


def build(graph) -> Products:
    """Lower the graph to Relax and compile it to a shared library, or, on a build cache hit, read the
    library and its source back without lowering anything."""
    key = cache_key(graph)
    cached = cache_dir() / f"{key}.so"
    source = cached.with_suffix(".relax.py")
    params = cached.with_suffix(".params.json")
    digest = cached.with_suffix(".sha256")
    notes = []
    weights = _cached_params(graph, params) if cached.exists() and source.exists() else None
    if weights is not None:
        lib, text = cached.read_bytes(), source.read_bytes()
        # truncated or corrupt: never handed to dlopen (SIGBUS), nor a parameter list that does not fit main
        if _digest(lib, text, json.dumps(weights).encode()) != _read(digest):
            notes.append(f"build cache entry {cached.name} did not match its checksum (truncated or corrupt); "
                         "rebuilt it")
            weights = None
    if weights is None:   # a miss, an entry whose parameter list is unreadable or does not fit, or a damaged one
        from .module import to_relax
        mod, weights = to_relax(graph)
        ex = compile_module(mod)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / LIBRARY
            ex.export_library(str(path))
            lib = path.read_bytes()
        text = mod.script().encode()
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            listed = json.dumps(weights).encode()
            entry = ((source, text), (params, listed), (digest, _digest(lib, text, listed).encode()),
                     (cached, lib))   # the library last: it marks a complete entry
            for dst, data in entry:
                atomic_write(dst, data)
        except OSError as e:   # a read-only home: the build still works, only uncached
            notes.append(f"build cache {cached.parent} not writable ({e}); compiled without caching")
    meta = {"host": host(), "weights": weights, "cache_key": key, "notes": notes}
    return Products({LIBRARY: lib, SOURCE: text}, meta)


def _digest(lib: bytes, text: bytes, params: bytes) -> str:
    """sha256 of a cache entry's library, source and parameter list (its `.sha256` file): params_problem checks
    only the list's form, and main may read a weight packed, unpacked or both."""
    return hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in (lib, text, params))).hexdigest()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cached_params(graph, path: Path):
    """The cached parameter list of `main` (meta["weights"]), or None when missing, unreadable or not this
    graph's (the entry is then rebuilt and overwritten)."""
    try:
        params = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return None if params_problem(graph, params) else params


def load(graph, products: Products) -> "TvmRunner":
    """Load the library into a Relax VM and bind the graph's weights: no codegen."""
    return TvmRunner(graph, products)


def _to_tvm(t: torch.Tensor):
    import tvm
    t = t.detach()
    if t.numel() == 0:   # torch's strides of an empty tensor are not what TVM calls compact
        return tvm.runtime.empty(tuple(t.shape), str(t.dtype).removeprefix("torch."))
    if not t.is_contiguous() or t.data_ptr() % 64:
        t = torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)  # TVM wants 64-byte alignment
    return tvm.runtime.from_dlpack(t)


def params_problem(graph, params) -> str | None:
    """Why `params` (meta["weights"]) cannot be `main`'s parameters for this graph, or None: graph weights by
    name in the graph's order (those some op reads unpacked), then {"node", "input", "weight"} entries naming a
    node whose input is that weight."""
    if not isinstance(params, list):
        return "the parameter list is not a list"
    names = [p for p in params if isinstance(p, str)]
    order = {n: i for i, n in enumerate(graph.weights)}
    if params[:len(names)] != names or any(n not in order for n in names) \
            or [order[n] for n in names] != sorted(order[n] for n in names):
        return "the parameter list does not start with graph weights in the graph's order"
    nodes = list(graph.nodes)
    for p in params[len(names):]:
        ok = isinstance(p, dict) and isinstance(p.get("node"), int) and 0 <= p["node"] < len(nodes) \
            and isinstance(p.get("input"), int) and 0 <= p["input"] < len(nodes[p["node"]].inputs) \
            and nodes[p["node"]].inputs[p["input"]].name == p.get("weight")
        if not ok:
            return f"prepacked parameter {p!r} does not name a node input holding that weight"
    return None


def bind_weights(graph, params) -> list:
    """The TVM tensors of `main`'s parameters after the inputs: the graph's weights by name (zero-copy), and
    the prepacked ones made again by their lowering's prepack hook ({"node": index, "input": i})."""
    from .module import run_prepack
    why = params_problem(graph, params)
    if why:
        raise ProductsError(f"cpu build products: {why}; rebuild")
    nodes = list(graph.nodes)
    out, packed = [], {}
    for p in params:
        if isinstance(p, str):
            out.append(_to_tvm(graph.weights[p].tensor))
            continue
        j = p["node"]
        if j not in packed:
            packed[j] = run_prepack(nodes[j])
        t = packed[j].get(p["input"])
        if t is None:
            raise ProductsError(f"cpu build products: node {j} ({nodes[j].op}) no longer prepacks input "
                                f"{p['input']} ({p['weight']}); rebuild")
        out.append(_to_tvm(t))
    return out


class _KvBuffer(_Buffer):
    """An in-place KV state's buffer (codegen/torch_kv.py's bookkeeping) and the TVM tensor over its memory."""
    __slots__ = ("tvm",)


def _kv_buffer(past: torch.Tensor, axis: int, rows: int, new: int, taken=(), keep: int = 0) -> tuple[_KvBuffer, int]:
    """(buffer, first row) the call appends `new` rows to: `past`'s own when `past` is its newest view (from
    row 0 unless a ring: `keep` = its window + sinks > 0) with room left (nothing copied) and no other state of
    this call appends to it (`taken`: ids of their buffers), else a new one with headroom holding a copy of
    `past` at row 0 (torch_kv rule 1: a shorter view, a second branch from one past, is never written over). A
    ring's buffer has room for its rows again: it slides forward one buffer length per that many steps; but a
    call longer than that (a long prompt: its rows are dropped once the ring slides) gets no headroom, and the
    runner then moves the ring to a buffer of `ring_capacity(keep)` (`_ring_moved`): a ring never holds more than
    twice that many rows between calls, nor twice the call's rows during one."""
    buf, start = _owner(past, axis)
    if isinstance(buf, _KvBuffer) and (start == 0 or keep) and buf.filled == start + rows \
            and start + rows + new <= buf.data.shape[axis] and id(buf) not in taken:
        return buf, start
    capacity = rows + new + max(HEADROOM, rows + new if keep else (rows + new) // 2)
    if keep and ring_outgrown(capacity, keep):
        capacity = rows + new
    return _new_kv_buffer(past.narrow(axis, 0, rows), axis, capacity), 0


def _ring_moved(buf: _KvBuffer, start: int, keep: int) -> tuple[_KvBuffer, int]:
    """A ring that a call left in an outgrown buffer (torch_kv.ring_outgrown: a long prompt or chunk passed
    through it): its `keep` rows [start, start + keep) copied into a buffer of `ring_capacity(keep)` rows (one
    copy of the ring, once), so the call's other rows are freed with the old buffer."""
    if not ring_outgrown(buf.data.shape[buf.dim], keep):
        return buf, start
    return _new_kv_buffer(buf.data.narrow(buf.dim, start, keep), buf.dim, ring_capacity(keep)), 0


def _new_kv_buffer(rows: torch.Tensor, axis: int, capacity: int) -> _KvBuffer:
    """A new buffer of `capacity` rows along `axis` whose first rows are a copy of `rows`."""
    import tvm
    shape = list(rows.shape)
    shape[axis] = capacity
    data = torch.empty(shape, dtype=rows.dtype)
    if data.data_ptr() % 64:    # TVM wants 64-byte aligned tensors; torch's CPU allocator gives them
        raise RuntimeError("cpu target: torch allocated a KV buffer that is not 64-byte aligned")
    data.narrow(axis, 0, rows.shape[axis]).copy_(rows)
    out = _KvBuffer(data, axis, rows.shape[axis])
    out.tvm = tvm.runtime.from_dlpack(data)
    return out


def _forget(box, key, _ref):
    box[0].pop(key, None)


class TvmRunner(Runner):
    def __init__(self, graph, products: Products):
        import tvm
        from tvm import relax
        super().__init__(products, products.meta.get("notes", []), device="cpu")
        content = products.files.get(LIBRARY)
        if content is None:
            raise ProductsError(f"cpu build products: {LIBRARY} is missing (products: {sorted(products.files)})")
        # dlopen needs a file; the mapping outlives it. Always a private copy under a fresh name, never the
        # artifact's own file: dlopen returns the library it already loaded from the same file name, so an
        # artifact saved again at a path this process loaded from would run the old library's code
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / LIBRARY
            if isinstance(content, Path):
                shutil.copyfile(content, path)
            else:
                path.write_bytes(content)
            self.lib = tvm.runtime.load_module(str(path))
        # the naive allocator (malloc/free per storage): TVM's default pooled one keeps every freed storage for
        # reuse at the same size, so calls at many sizes (prompts of each length) kept them all: SmolLM2's RSS
        # went 2.0 -> 4.4 GB over 64 prompt lengths (benchmarks/bench_cpu_memory.py); decode speed is the same
        self.vm = relax.VirtualMachine(self.lib, tvm.cpu(), memory_cfg="naive")
        self._main = self.vm["main"]
        self.weights = bind_weights(graph, products.meta["weights"])
        self.graph = graph
        from .module import inplace_states, kv_length_symbols
        from ...ir.dtypes import to_torch
        self.kv = inplace_states(graph)             # states whose buffers this runner owns (module.py)
        self._kv_syms = kv_length_symbols(self.kv)
        self._kv_in = {k.input for k in self.kv}
        self._n_out = len(graph.outputs)
        self._plain_out = [j for j in range(self._n_out) if j not in {k.output for k in self.kv}]
        self._kv_dtypes = [to_torch(kv.state.input.type.dtype) for kv in self.kv]
        self._returned: dict[int, tuple] = {}   # id(torch output) -> (weakref to it, its TVM tensor)
        self._returned_box = [self._returned]   # what the weakref callbacks reach (not the runner: no cycle)

    def _input(self, t):
        """The TVM tensor for input `t`: the very one behind it when `t` is an output of the last call, unchanged
        object (a decoder feeding its KV state back skips 60 DLPack round trips per step), else by DLPack."""
        hit = self._returned.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        return _to_tvm(t)

    def __call__(self, *tensors):
        # The VM checks every input's dtype, rank and (symbolic) shape itself; the interpreter's signature
        # check (sympy per symbolic dim, ms per decode step) runs only when the VM refuses, for its message.
        try:
            ins = [None if i in self._kv_in else self._input(t) for i, t in enumerate(tensors)]
            kv, lengths = self._kv_inputs(tensors, ins) if self.kv else ([], [])
            outs = self._main(*ins, *lengths, *self.weights)
        except Exception:
            from ...ir.interpreter import bind_symbols
            bind_symbols(self.graph, tensors)   # raises the interpreter's TypeError naming the input
            raise
        result = [None] * self._n_out
        plain = [(j, outs[j]) for j in self._plain_out]   # the state outputs are the buffers themselves: not read
        for j, o in plain:
            result[j] = torch.from_dlpack(o)
        for k, buf, start, rows in kv:   # the state outputs: views of the buffers the call appended to in place
            buf.filled = start + rows
            if k.keep and rows > k.keep:   # a ring slid (module.py)
                start, rows = start + rows - k.keep, k.keep
                if k.sinks:
                    buf.gen += 1    # its sink rows overwrote rows the past view showed (torch_kv rule 2)
                buf, start = _ring_moved(buf, start, rows)   # after a long prompt: keep the ring, not the prompt
            result[k.output] = _view(buf, start, rows)
        # entries of the last call's outputs only, each dropped with its tensor (no memory kept alive here)
        self._returned = {id(result[j]): (weakref.ref(result[j], functools.partial(_forget, self._returned_box,
                                                                                   id(result[j]))), o)
                          for j, o in plain}
        self._returned_box[0] = self._returned
        return result

    def _kv_inputs(self, tensors, ins):
        """Put each in-place state's buffer in `ins` (module.py's main takes buffers, then `kv_lengths`);
        returns ([(InplaceState, buffer, first row, rows after the append)], [kv_lengths])."""
        import tvm
        lengths, kv, taken = {}, [], set()
        for k, dt in zip(self.kv, self._kv_dtypes):
            past = tensors[k.input]
            if not isinstance(getattr(past, "_slimgraph_kv", (None,))[0], _KvBuffer) and \
                    (past.dtype != dt or past.dim() != 4 or past.device.type != "cpu"):   # not a view of ours
                have, want = str(past.dtype).removeprefix("torch."), str(dt).removeprefix("torch.")
                raise TypeError(f"cpu target: state input %{k.state.input.name} must be a rank-4 {want} tensor on "
                                f"the cpu, got {have} {tuple(past.shape)} on {past.device}")
            rows = past.shape[k.axis]
            if lengths.setdefault(k.length, rows) != rows:
                raise ValueError(f"symbol {k.length}: state inputs of {lengths[k.length]} and {rows} rows")
            new = k.new_rows if isinstance(k.new_rows, int) else tensors[k.new_rows[0]].shape[k.new_rows[1]]
            buf, start = _kv_buffer(past, k.axis, rows, new, taken, k.keep)   # taken: one tensor, two states
            taken.add(id(buf))
            ins[k.input] = buf.tvm
            if k.start is not None:
                lengths[k.start] = start
            kv.append((k, buf, start, rows + new))
        return kv, [tvm.runtime.ShapeTuple([lengths[s] for s in self._kv_syms])]

    def truncate_state(self, t, axis, length):
        return truncate(t, axis, length)

    def keep_state(self, t):
        return keep_state(t)
