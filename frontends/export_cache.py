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

    SLIMGRAPH_CACHE_DIR   the cache root, else $XDG_CACHE_HOME/slimgraph, else ~/.cache/slimgraph
                          (slimgraph/cache.py); entries live in <root>/export
    SLIMGRAPH_EXPORT_CACHE=0   never read or write the cache
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
from pathlib import Path

import torch

from ..cache import atomic_write, cache_dir as _cache_dir

VERSION = 1   # bump when what an entry means changes
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def enabled() -> bool:
    return os.environ.get("SLIMGRAPH_EXPORT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off", "")


def cache_dir() -> Path:
    return _cache_dir("export")


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


def _code_digest(code, h) -> None:
    """Feed a code object to `h` by its parts (marshal's bytes depend on reference counts: not stable)."""
    h.update(code.co_code)
    for part in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        h.update(repr(part).encode())
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            _code_digest(c, h)
        elif isinstance(c, frozenset):   # its repr's order follows string hashing: differs between processes
            h.update(repr(sorted(map(repr, c))).encode())
        else:
            h.update(repr(c).encode())


def _callable_digest(f, h, depth: int = 0) -> None:
    """Feed what a function computes with to `h`: its code, defaults, closure values (recursively for callables)
    and what a decorator wraps; properties, static/class methods and partials by their functions."""
    if depth > 8:
        return
    for attr in ("fget", "fset", "__func__", "func", "__wrapped__"):   # property, methods, partial, decorators
        inner = getattr(f, attr, None)
        if inner is not None and inner is not f:
            _callable_digest(inner, h, depth + 1)
    if isinstance(f, functools.partial):
        h.update(repr((f.args, f.keywords)).encode())
    code = getattr(f, "__code__", None)
    if code is None:
        return
    _code_digest(code, h)
    values = [*(getattr(f, "__defaults__", None) or ()), *(getattr(f, "__kwdefaults__", None) or {}).items()]
    for cell in getattr(f, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:   # an empty cell
            pass
    for v in values:
        _value_digest(v, h, depth + 1)


def _value_digest(v, h, depth: int) -> None:
    """A default or closure value: callables by what they compute, containers by their items, the rest by
    repr without object addresses (they differ between processes)."""
    if callable(v) and not isinstance(v, type):
        _callable_digest(v, h, depth)
    elif isinstance(v, (tuple, list)) and depth < 8:
        for x in v:
            _value_digest(x, h, depth + 1)
    elif isinstance(v, (set, frozenset)):
        h.update(repr(sorted(_ADDRESS.sub("", repr(x)) for x in v)).encode())
    else:
        h.update(_ADDRESS.sub("", repr(v)).encode())


def _namespace_digest(namespace: dict) -> str:
    """sha256 of the callables of a class or module namespace: a method or module function replaced at run
    time (a patch, another closure of one factory) changes it even though no source file does."""
    h = hashlib.sha256()
    for name, f in sorted(namespace.items(), key=lambda kv: kv[0]):
        if callable(f) or isinstance(f, (property, staticmethod, classmethod)):
            h.update(name.encode() + b"\0")
            _callable_digest(f, h)
    return h.hexdigest()


def _methods_digest(cls) -> str:
    return _namespace_digest(dict(vars(cls)))


def named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` by fully qualified name, tied ones under each of their names."""
    return {**dict(model.named_buffers(remove_duplicate=False)), **dict(model.named_parameters(remove_duplicate=False))}


def key(model: torch.nn.Module, options: dict) -> str | None:
    """The cache key of exporting `model` with `options`, or None when the model cannot be keyed safely: a
    module whose `forward` was replaced on the instance, forward hooks, a class whose source cannot be read,
    a config json cannot write."""
    try:
        return _key(model, options)
    except Exception:  # noqa: BLE001 - whatever cannot be keyed is exported every time, never wrongly cached
        return None


def _key(model, options):
    import sys
    import transformers
    from torch.nn.modules import module as nn_module
    if any(getattr(nn_module, g, None) for g in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return None
    classes, modules = {}, {}
    for mod in model.modules():
        if "forward" in vars(mod) or mod._forward_hooks or mod._forward_pre_hooks:   # code the key cannot see
            return None
        for cls in type(mod).__mro__:
            name = f"{cls.__module__}.{cls.__qualname__}"
            if name in classes or cls.__module__.startswith(("torch.", "builtins")) or cls is object:
                continue
            source = inspect.getsourcefile(cls)
            if source is None:
                return None
            classes[name] = [_file_digest(source), _methods_digest(cls)]
            if cls.__module__ not in modules and cls.__module__ in sys.modules:   # its module's functions
                modules[cls.__module__] = _namespace_digest(dict(vars(sys.modules[cls.__module__])))
    tensors = named_tensors(model)
    ties: dict[int, list[str]] = {}
    for name, t in tensors.items():
        ties.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    config = getattr(model, "config", None)
    parts = {
        "version": VERSION, "import_code": _import_code_digest(), "torch": torch.__version__,
        "transformers": transformers.__version__, "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "classes": sorted(classes.items()), "modules": sorted(modules.items()),
        "config": json.dumps(config.to_dict(), sort_keys=True) if config is not None else None,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "tensors": [(n, list(t.shape), str(t.dtype), t.device.type) for n, t in tensors.items()],
        "ties": sorted(sorted(v) for v in ties.values() if len(v) > 1),
        "options": options,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load(k: str, model: torch.nn.Module, notes: list):
    """The cached graph for key `k` with the model's tensors bound, or None (no entry, or a damaged one:
    noted in `notes`)."""
    text_path, sum_path = cache_dir() / f"{k}.sgir", cache_dir() / f"{k}.sha256"
    try:
        text, digest = text_path.read_bytes(), sum_path.read_text()
    except OSError:
        return None
    if hashlib.sha256(text).hexdigest() != digest:
        notes.append(f"export cache entry {text_path.name} did not match its checksum (truncated or corrupt); "
                     "exported again")
        return None
    return bind(text, model, notes, text_path.name)


def bind(text: bytes, model: torch.nn.Module, notes: list, origin: str = "graph text"):
    """Parse an entry's IR text with the model's own tensors as its weights (shared, detached as torch.export
    gives them), or None when it cannot be read or names a tensor the model lacks (noted)."""
    from ..ir.parser import ParseError, parse_graph
    tensors = {n: t.detach() for n, t in named_tensors(model).items()}
    try:
        graph = parse_graph(text.decode(), weights=tensors)
    except (ParseError, UnicodeDecodeError) as e:
        notes.append(f"export cache entry {origin} could not be read ({e}); exported again")
        return None
    missing = [n for n in graph.weights if n not in tensors]
    if missing:
        notes.append(f"export cache entry {origin} names tensors the model lacks ({missing[:3]}); exported again")
        return None
    return graph


def store(k: str, graph, model: torch.nn.Module, notes: list) -> bytes | None:
    """Write the entry for key `k` when every weight of `graph` is one of the model's tensors (shared, not a
    copy or a derived constant); returns the entry's text when written."""
    from ..ir.printer import print_graph
    tensors = named_tensors(model)
    for name, w in graph.weights.items():
        t, own = w.tensor, tensors.get(name)
        if own is None or t.data_ptr() != own.data_ptr() or t.shape != own.shape or t.stride() != own.stride() \
                or t.dtype != own.dtype:
            return None
    text = print_graph(graph).encode()
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        for dst, data in ((d / f"{k}.sha256", hashlib.sha256(text).hexdigest().encode()), (d / f"{k}.sgir", text)):
            atomic_write(dst, data)
    except OSError as e:   # a read-only home: the import still works, only uncached
        notes.append(f"export cache {d} not writable ({e}); exported without caching")
        return None
    return text
