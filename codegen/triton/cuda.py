"""The `cuda` target: IR -> torch-level Python calling Triton kernels, run on an NVIDIA GPU.

    products = build(graph)        # triton_kernels.py (generated) + torch_forward.py + packed weights
    runner = load(graph, products) # imports the kernels, binds weights on the GPU: no codegen
    outs = runner(*tensors)        # inputs on any device; outputs on the runner's device

How a node runs, first match wins:
1. inside a fused elementwise group (codegen/triton/partition.py): one generated Triton kernel per
   group (codegen/triton/elementwise.py), its source kept in the products as `triton_kernels.py`;
2. the "triton" lowering table (hand-written kernels: codegen/triton/kernels/: qlinear, norms, rope,
   attention);
3. a "torch" lowering without a prepack hook (device-generic torch calls: matmul, softmax, views...;
   a torch lowering with a prepack packs weights for torch's CPU kernels and is not used here);
4. the op's reference implementation (torch ops: correct on any device, not fast).

The forward itself is the `torch` target's generated straight-line source (codegen/torch_fx.py), so the
state ops, symbolic dims and the decoder runtime work as there (the KV cache is the same growing
buffer, allocated on the GPU).

Devices: a CUDA GPU when torch sees one. Without one, `TRITON_INTERPRET=1` runs every Triton kernel
in Triton's interpreter on CPU tensors (slow; the test suite's mode); with neither, optimize() fails
at once naming the reason (`check()`), never deep inside Triton.
"""
from __future__ import annotations
import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from ...cache import atomic_write, cache_dir
from ..contract import Products, ProductsError, Runner
from ..lowering import get_lowering
from . import elementwise
from .partition import partition

KERNELS = "triton_kernels.py"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device() -> str:
    if interpreting():
        return "cpu"
    return "cuda"


def check() -> str | None:
    """Why the `cuda` target cannot run here (None when it can)."""
    import torch
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return ("target 'cuda' needs an NVIDIA GPU that torch can see (torch.cuda.is_available() is False"
                f"{'; this torch is a CPU build: ' + torch.__version__ if torch.version.cuda is None else ''}); "
                "use target='torch' on CPU, or set TRITON_INTERPRET=1 to run the Triton kernels in Triton's "
                "CPU interpreter (slow: tests and debugging)")
    return None


def host() -> dict:
    import torch
    import triton
    import slimgraph
    dev = "interpreter" if interpreting() else torch.cuda.get_device_name()
    return {"slimgraph": slimgraph.__version__, "torch": torch.__version__, "triton": triton.__version__,
            "device": dev}


def _lower(op: str):
    low = get_lowering("triton", op)
    if low is not None:
        return low
    low = get_lowering("torch", op)
    return low if low is not None and low.prepack is None else None


def build(graph) -> Products:
    """Partition, generate the fused kernels' source, generate the forward (codegen/torch_fx.py)."""
    from .. import torch_fx
    groups = partition(graph)
    sources = [elementwise.HEADER]
    names = [f"fused_{i}" for i in range(len(groups))]
    for name, g in zip(names, groups):
        sources.append(elementwise.kernel_source(name, g))
    src = "\n\n".join(sources)
    module = _import_kernels(src)
    fused = {}
    for name, g in zip(names, groups):
        for n in g.nodes:
            fused[id(n)] = None
        fused[id(g.root)] = (getattr(module, name), g.inputs)
    products = torch_fx.build(graph, lower=_lower, fused=fused, host_info=host())
    products.files[KERNELS] = src.encode()
    products.meta["kernels_module"] = module.__name__
    products.meta["fused_groups"] = len(groups)
    products.meta["fused_nodes"] = sum(len(g.nodes) for g in groups)
    return products


def load(graph, products: Products) -> "CudaRunner":
    """Import the stored kernels, run the `torch` target's load, move the buffers to the device."""
    from .. import torch_fx
    if KERNELS not in products.files or "kernels_module" not in products.meta:
        raise ProductsError(f"cuda build products lack {KERNELS}: rebuild the model")
    src = products.read_bytes(KERNELS).decode()
    module = _import_kernels(src)
    if module.__name__ != products.meta["kernels_module"]:
        raise ProductsError(f"cuda build products: {KERNELS} does not match its recorded hash (corrupt); "
                            "rebuild the model")
    inner = torch_fx.load(graph, products)
    dev = device()
    inner.module.to(dev)
    return CudaRunner(inner, products, dev)


class CudaRunner(Runner):
    def __init__(self, inner, products: Products, dev: str):
        notes = list(inner.notes)
        if dev == "cpu":
            notes.append("cuda target running in Triton's interpreter (TRITON_INTERPRET=1): correct, slow")
        super().__init__(products, notes, device=dev)
        self.inner = inner

    def __call__(self, *tensors):
        return self.inner(*(t.to(self.device) for t in tensors))

    def truncate_state(self, t, axis, length):
        return self.inner.truncate_state(t, axis, length)

    def keep_state(self, t):
        return self.inner.keep_state(t)


@functools.lru_cache(maxsize=1)
def _scratch_dir() -> Path:
    """A temp folder for this process's kernel sources when the cache root is unwritable (left for Triton to
    read the source back from)."""
    return Path(tempfile.mkdtemp(prefix="slimgraph-triton-"))


def _import_kernels(src: str):
    """Import generated kernel source as a module named by its content hash. Triton's JIT reads kernel
    source with `inspect`, so the module is a real file (in the cache dir), not exec'd text."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    name = f"slimgraph_triton_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    d = cache_dir("triton")
    try:
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.py"
        if not path.exists() or path.read_text() != src:
            atomic_write(path, src.encode())
    except OSError as e:   # a read-only home: the kernels still load, from a private temp folder
        import warnings
        path = _scratch_dir() / f"{name}.py"
        path.write_text(src)
        warnings.warn(f"triton kernel cache {d} not writable ({e}); kernel source written to {path.parent}",
                      stacklevel=2)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module
