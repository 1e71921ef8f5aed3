"""The `c` target's build (IR -> C sources + weights + Makefile) and load (gcc -> shared library -> ctypes).

    products = build(graph)                          # every dim static (bind-shapes pass, or shapes=)
    products = build(graph, shapes={"batch": 1, "seq": 128})   # specializes a copy of the graph
    runner = load(graph, products)                   # make libslimgraph_model.so in a cache dir, ctypes
    outs = runner(*tensors)

Products are plain files, a folder that builds with `make` alone (README.txt in it says how):
model.c / model.h (generated), slimgraph_kernels.c / .h (the kernel library), main.c (a driver reading
inputs from files), Makefile, README.txt, weights.bin. `load` writes them into
<cache root>/c/<sha256 of sources and compiler flags> (the root: `$SLIMGRAPH_CACHE_DIR`, else
`$XDG_CACHE_HOME/slimgraph`, else `~/.cache/slimgraph`; slimgraph/cache.py), runs
`make libslimgraph_model.so` there once (CC, CFLAGS and OPENMP from the environment, as make reads
them) and calls `slimgraph_forward` through ctypes. A missing compiler is a CTargetError saying what
to install.
"""
from __future__ import annotations
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import torch

from ...cache import cache_dir as _cache_dir
from ..contract import Products, Runner
from .emit import CTargetError, Emitter

RUNTIME_FILES = ("slimgraph_kernels.c", "slimgraph_kernels.h", "main.c", "Makefile")
LIBRARY = "libslimgraph_model.so"


def build(graph, shapes: dict[str, int] | None = None) -> Products:
    """Generate the C sources, weights and build files for `graph` (see the module docstring).
    Raises CTargetError when a dim is symbolic (and `shapes` does not bind it) or an op has no lowering."""
    from . import lower_elementwise, lower_nn, lower_shape  # noqa: F401  (the lowering table)
    if shapes:
        from ...ir.specialize import specialize
        try:
            graph = specialize(graph.copy(), shapes)
        except ValueError as e:
            raise CTargetError(f"c target: {e}") from None
    _check_static(graph)
    files = Emitter(graph).generate()
    meta = files.pop("meta")
    out = {"model.c": files["model.c"].encode(), "model.h": files["model.h"].encode(),
           "weights.bin": files["weights.bin"]}
    for name in RUNTIME_FILES:
        out[name] = _runtime(name)
    out["README.txt"] = readme(graph, meta).encode()
    return Products(out, {**meta, "inputs": [_sig(v) for v in graph.inputs],
                          "outputs": [_sig(v) for v in graph.outputs]})


def _sig(v) -> dict:
    return {"name": v.name, "type": str(v.type)}


def _runtime(name: str) -> bytes:
    return resources.files(__package__).joinpath("runtime", name).read_bytes()


def _check_static(graph):
    from ...ir.causal_lm import context_dim
    from ...ir.specialize import free_dims
    syms = sorted(free_dims(graph))
    if not syms:
        return
    users = [f"%{v.name}: {v.type}" for v in graph.inputs if not v.type.is_static]

    def example(dims):
        return ",".join(f"{s}={128 if s == 'seq' else 0 if s == 'past' else 1}" for s in dims)

    ctx = context_dim(graph)
    if ctx is not None:     # made by sparsify-/linearize-attention: it exists only after them, and = past + seq
        first = example([s for s in syms if s != ctx])
        mask = next(v for v in graph.inputs if v.name == "attention_mask")
        seq = mask.type.shape[2] if isinstance(mask.type.shape[2], int) else 128
        pipe = (f"bind-shapes{{dims=[{first}]}},canonicalize,...," if first else "...,") + \
            f"<the pass that made {ctx}>,bind-shapes{{dims=[{ctx}={seq}]}},dce"
        raise CTargetError(
            f"the c target supports only static shapes: graph @{graph.name} has symbolic dims {', '.join(syms)} "
            f"({', '.join(users[:4])}{', ...' if len(users) > 4 else ''}). {ctx} is the attention mask's "
            f"columns, which sparsify-attention / linearize-attention make a dim of its own: it exists only after "
            f"that pass, so bind it with a second bind-shapes after it, to the positions before the call + seq "
            f"({ctx}={seq} for a call from empty state, past=0): pipeline='{pipe}'")
    every = example(syms)
    raise CTargetError(
        f"the c target supports only static shapes: graph @{graph.name} has symbolic dims {', '.join(syms)} "
        f"({', '.join(users[:4])}{', ...' if len(users) > 4 else ''}). Bind them before building: start the "
        f"pipeline with the pass bind-shapes{{dims=[{every}]}} (e.g. pipeline='bind-shapes{{dims=[{every}]}},"
        f"canonicalize,cse,dce', or `slimgraph compile ... --target c --pipeline ...`), or call "
        f"slimgraph.codegen.c.build(graph, shapes={{...}})")


def host() -> dict:
    """What the products depend on besides the graph: the C compiler and the machine."""
    cc = _cc()
    version = None
    if shutil.which(cc[0]):
        try:
            version = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            version = None
    return {"cc": version, "machine": platform.machine()}


def _cc() -> list[str]:
    return (os.environ.get("CC") or "gcc").split()


def cache_dir() -> Path:
    return _cache_dir("c")


def compile_library(products: Products, notes: list | None = None) -> Path:
    """`make libslimgraph_model.so` over the products in a cache dir keyed by their content; returns
    the library's path (built once per content and compiler settings). A cache root that cannot hold the
    build (read-only home, a file in its place) costs only the caching: the library is built in a fresh
    temp folder (left there: the runner dlopens it) and a note saying so is appended to `notes`."""
    cc = _cc()
    if shutil.which(cc[0]) is None:
        raise CTargetError(f"the c target needs a C compiler to build its sources: {cc[0]!r} was not found on "
                           "PATH. Install gcc (apt-get install gcc; macOS: xcode-select --install) or set CC to "
                           "another C99 compiler. `slimgraph compile --target c -o DIR` still writes the sources, "
                           "which build anywhere with `make`")
    if shutil.which("make") is None:
        raise CTargetError("the c target builds its sources with make, which was not found on PATH: install it "
                           "(apt-get install make)")
    env_key = "\0".join([" ".join(cc), os.environ.get("CFLAGS", ""), os.environ.get("OPENMP", "-fopenmp")])
    h = hashlib.sha256(env_key.encode())
    sources = ["model.c", "model.h", *[f for f in RUNTIME_FILES if f != "main.c"]]
    for name in sources:
        h.update(name.encode() + b"\0" + products.read_bytes(name))
    final = cache_dir() / h.hexdigest()[:24]
    lib = final / LIBRARY
    if lib.is_file():
        return lib
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    except OSError as e:   # a read-only home: the build still works, only uncached
        tmp = final = Path(tempfile.mkdtemp(prefix="slimgraph-c-"))
        lib = final / LIBRARY
        if notes is not None:
            notes.append(f"c build cache {cache_dir()} not writable ({e}); "
                         f"compiled without caching in {tmp}")
    for name in sources:
        (tmp / name).write_bytes(products.read_bytes(name))
    r = subprocess.run(["make", "-s", LIBRARY], cwd=tmp, capture_output=True, text=True)
    if r.returncode:   # the sources stay in tmp for a look
        raise CTargetError(f"c target: `make {LIBRARY}` failed in {tmp} (compiler {' '.join(cc)}):\n"
                           + (r.stderr or r.stdout)[-4000:])
    if tmp == final:       # uncached: built in place
        return lib
    try:
        os.rename(tmp, final)
    except OSError:        # another process built the same sources first
        shutil.rmtree(tmp, ignore_errors=True)
        if not lib.is_file():
            raise
    return lib


def load(graph, products: Products) -> "CRunner":
    return CRunner(graph, products)


class CRunner(Runner):
    """Calls the compiled `slimgraph_forward` through ctypes; one arena per runner (calls are serialized)."""

    def __init__(self, graph, products: Products):
        super().__init__(products)
        self.graph = graph
        self.library = compile_library(products, self.notes)
        self._lib = ctypes.CDLL(str(self.library))
        self._fn = self._lib.slimgraph_forward
        self._fn.argtypes = [ctypes.c_void_p] * 4
        self._fn.restype = ctypes.c_int
        data = products.read_bytes("weights.bin")
        self._weights = torch.empty(len(data), dtype=torch.uint8)
        if data:
            self._weights.numpy()[:] = memoryview(data)
        self._arena = torch.empty(int(products.meta["arena_bytes"]) + 64, dtype=torch.uint8)
        self._arena_ptr = self._arena.data_ptr() + (-self._arena.data_ptr()) % 64   # 64-byte aligned
        from ...ir.dtypes import to_torch
        self._outs = [(tuple(v.type.shape), to_torch(v.type.dtype)) for v in graph.outputs]
        self._lock = threading.Lock()

    def __call__(self, *tensors):
        from ...ir.interpreter import bind_symbols
        bind_symbols(self.graph, tensors)
        ins = [t.detach().contiguous() for t in tensors]
        if any(t.device.type != "cpu" for t in ins):
            raise ValueError("the c target runs on the CPU: pass CPU tensors")
        outs = [torch.empty(s, dtype=d) for s, d in self._outs]
        in_arr = (ctypes.c_void_p * max(1, len(ins)))(*[t.data_ptr() for t in ins])
        out_arr = (ctypes.c_void_p * max(1, len(outs)))(*[t.data_ptr() for t in outs])
        with self._lock:
            rc = self._fn(in_arr, out_arr, self._weights.data_ptr(), self._arena_ptr)
        if rc:
            raise ValueError(f"c target: slimgraph_forward returned {rc} (1: an index input such as a token id "
                             "is out of range)")
        return outs


def readme(graph, meta) -> str:
    ins = "\n".join(f"  {i}  {v.name:<24} {v.type}  ({v.type.nbytes()} bytes)" for i, v in enumerate(graph.inputs))
    outs = "\n".join(f"  {i}  {v.name:<24} {v.type}  ({v.type.nbytes()} bytes)" for i, v in enumerate(graph.outputs))
    return f"""A model compiled by slimgraph's `c` target (graph @{graph.name}): plain C99, no Python or TVM needed.

Build (any C99 compiler; OpenMP optional):
  make                              # libslimgraph_model.a and the driver ./slimgraph_driver
  make CC=clang CFLAGS='-O3 -march=native'
  make OPENMP=                      # without OpenMP
  make libslimgraph_model.so        # a shared library (-fPIC)

Run the driver on raw input files, get raw output files:
  ./slimgraph_driver weights.bin {' '.join(v.name + '.bin' for v in graph.inputs)} {' '.join('OUT_' + v.name + '.bin' for v in graph.outputs)}
  (./slimgraph_driver with no arguments prints this signature.)

File format: each tensor is its raw bytes, dense row-major, in this host's byte order (little-endian on
x86/ARM); bool is one byte 0/1; i64 is int64_t. E.g. numpy: x.astype(np.int64).tofile("input_ids.bin"),
np.fromfile("OUT_logits.bin", np.float32).reshape(shape).

Inputs (static shapes, fixed at build time):
{ins}
Outputs:
{outs}

Files:
  model.c, model.h        generated: slimgraph_forward() and the signature tables
  slimgraph_kernels.c/.h  the kernel library (linear, int8/int4 qlinear, attention, norms, copies, ...)
  main.c                  the driver above
  weights.bin             every constant ({meta['weights_bytes']} bytes, 64-byte aligned offsets baked into model.c)

API (model.h):
  int slimgraph_forward(const void *const *inputs, void *const *outputs,
                        const unsigned char *weights, unsigned char *arena);
  weights: the bytes of weights.bin; arena: SLIMGRAPH_ARENA_BYTES ({meta['arena_bytes']}) bytes of scratch
  memory (a static array is fine); both aligned to at least 16 bytes (64 is best). Returns 0, or 1 when
  an index input (a token id) is out of range. No allocation, no I/O, no globals written: it runs on
  bare-metal targets, and separate arenas make concurrent calls safe.

Embedded hosts and FPGA HLS flows:
  - Link the weights into the program instead of reading a file:
      xxd -i weights.bin > weights.c            # unsigned char weights_bin[] = {{...}};
    (declare it `const` and aligned: __attribute__((aligned(64))) ) or, with GNU ld:
      ld -r -b binary -o weights.o weights.bin   # symbols _binary_weights_bin_start/_end
  - Build without OpenMP (make OPENMP=) and with the target's cross compiler (make CC=arm-none-eabi-gcc
    CFLAGS='-O2 -mcpu=...'), then link libslimgraph_model.a and libm.
  - HLS tools (Vitis HLS, Intel HLS, Catapult) take C: model.c is straight-line calls into
    slimgraph_kernels.c with every loop bound a compile-time constant, no recursion and no dynamic
    memory; weights and arena are the two memory interfaces to map (e.g. AXI masters).
"""
