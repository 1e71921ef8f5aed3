"""A disk cache of torch.export for transformers causal LMs: the second `optimize()` of a model skips the export.

`frontends.hf.export_causal_lm` exports on synthetic inputs made from the model's config, so its graph
depends on the model's code, its config, the names/shapes/dtypes of its tensors (not their values) and the
versions of torch, transformers and slimgraph's import code; `key()` hashes exactly those. SmolLM2-135M:
torch.export takes ~11 s of a warm ~13 s `optimize()` (benchmarks/bench_cpu_target.py).

An entry is the IR text of the imported graph (ir/printer.py) with no tensor data: every weight is one of
the model's own parameters or buffers, bound again by name from the live model on a hit (a graph holding
any other tensor, e.g. a constant folded during import, is not cached). Entries are written atomically with
a sha256; a damaged one is exported again. Since a cache can only be as right as its key, the caller also
runs the cached graph once on the example inputs against the model itself (`frontends.hf`) and exports
again, with a note, when they differ.

    SLIMGRAPH_CACHE_DIR   the cache root (default ~/.cache/slimgraph); entries live in <root>/export
    SLIMGRAPH_EXPORT_CACHE=0   never read or write the cache
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import marshal
import os
from pathlib import Path

import torch

VERSION = 1   # bump when what an entry means changes


def enabled() -> bool:
    return os.environ.get("SLIMGRAPH_EXPORT_CACHE", "1") not in ("0", "false", "no", "")


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMGRAPH_CACHE_DIR") or Path.home() / ".cache" / "slimgraph") / "export"


@functools.lru_cache(maxsize=1)
def _import_code_digest() -> str:
    """sha256 of the sources that turn an ExportedProgram into IR text and back (frontends/, ir/)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted([*(root / "frontends").glob("*.py"), *(root / "ir").rglob("*.py")]):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _methods_digest(cls) -> str:
    """sha256 of the code of the functions in the class's own namespace: a method replaced on the class (a
    patch) changes it even though the source file does not."""
    h = hashlib.sha256()
    for name, f in sorted(vars(cls).items()):
        code = getattr(getattr(f, "__func__", f), "__code__", None)
        if code is not None:
            h.update(name.encode() + b"\0" + marshal.dumps(code))
    return h.hexdigest()


def named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` by fully qualified name, tied ones under each of their names."""
    return {**dict(model.named_buffers(remove_duplicate=False)), **dict(model.named_parameters(remove_duplicate=False))}


def key(model: torch.nn.Module, options: dict) -> str | None:
    """The cache key of exporting `model` with `options`, or None when the model cannot be keyed safely: a
    module whose `forward` was replaced on the instance, or a class whose source file cannot be read."""
    import transformers
    classes = {}
    for mod in model.modules():
        if "forward" in vars(mod):     # an instance-level forward: code the key cannot see
            return None
        for cls in type(mod).__mro__:
            name = f"{cls.__module__}.{cls.__qualname__}"
            if name in classes or cls.__module__.startswith(("torch.", "builtins")) or cls is object:
                continue
            try:
                classes[name] = [_file_digest(inspect.getsourcefile(cls)), _methods_digest(cls)]
            except (OSError, TypeError, ValueError):
                return None
    tensors = named_tensors(model)
    ties: dict[int, list[str]] = {}
    for name, t in tensors.items():
        ties.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    config = getattr(model, "config", None)
    parts = {
        "version": VERSION, "import_code": _import_code_digest(), "torch": torch.__version__,
        "transformers": transformers.__version__, "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "classes": sorted(classes.items()),
        "config": config.to_json_string(use_diff=False) if config is not None else None,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "tensors": [(n, list(t.shape), str(t.dtype), t.device.type) for n, t in tensors.items()],
        "ties": sorted(sorted(v) for v in ties.values() if len(v) > 1),
        "options": options,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(k: str, model: torch.nn.Module, notes: list):
    """The cached graph for key `k` with the model's tensors bound, or None (no entry, or a damaged one:
    noted in `notes`)."""
    from ..ir.parser import ParseError, parse_graph
    text_path, sum_path = cache_dir() / f"{k}.sgir", cache_dir() / f"{k}.sha256"
    try:
        text, digest = text_path.read_bytes(), sum_path.read_text()
    except OSError:
        return None
    if hashlib.sha256(text).hexdigest() != digest:
        notes.append(f"export cache entry {text_path.name} did not match its checksum (truncated or corrupt); "
                     "exported again")
        return None
    tensors = {n: t.detach() for n, t in named_tensors(model).items()}   # shared, as torch.export gives them
    try:
        graph = parse_graph(text.decode(), weights=tensors)
    except (ParseError, UnicodeDecodeError) as e:
        notes.append(f"export cache entry {text_path.name} could not be read ({e}); exported again")
        return None
    missing = [n for n in graph.weights if n not in tensors]
    if missing:
        notes.append(f"export cache entry {text_path.name} names tensors the model lacks ({missing[:3]}); "
                     "exported again")
        return None
    return graph


def store(k: str, graph, model: torch.nn.Module, notes: list) -> bool:
    """Write the entry for key `k` when every weight of `graph` is one of the model's tensors (shared, not a
    copy or a derived constant); True when written."""
    from ..ir.printer import print_graph
    tensors = named_tensors(model)
    for name, w in graph.weights.items():
        t, own = w.tensor, tensors.get(name)
        if own is None or t.data_ptr() != own.data_ptr() or t.shape != own.shape or t.stride() != own.stride() \
                or t.dtype != own.dtype:
            return False
    text = print_graph(graph).encode()
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        for dst, data in ((d / f"{k}.sha256", hashlib.sha256(text).hexdigest().encode()), (d / f"{k}.sgir", text)):
            tmp = dst.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
    except OSError as e:   # a read-only home: the import still works, only uncached
        notes.append(f"export cache {d} not writable ({e}); exported without caching")
        return False
    return True
