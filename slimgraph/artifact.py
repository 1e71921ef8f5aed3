"""The artifact: a self-contained directory that `load` turns back into a CompiledModel.

    model.sg/
      manifest.json          format version, versions, target, pipeline, call signature (JSON
                             pytree specs), KV layout, report, sha256 + size of every file,
                             and a checksum of the manifest itself
      graph.sgir             the optimized graph as IR text (with its declared state)
      weights.safetensors    every weight as stored (tied tensors once, see weight_aliases)
      <build products>       the target's build (codegen/contract.py): e.g. torch_forward.py and
                             torch_buffers.safetensors (packed kernels' weights), or model.onnx

`save` writes into a temporary sibling directory and renames it into place, so a failure
leaves nothing half-written; an existing artifact at `path` is replaced atomically (`slimgraph
compile -o` asks for --force first), anything else there is refused. Files and the directory get
the modes the umask gives (e.g. 0644/0755), as artifacts are meant to be shared. `load` needs no
model code and no pickle: it checks the format version, the manifest's schema and checksum, each file's size and sha256, and the graph's
signature against the manifest, then parses the graph, opens the weights lazily
(safetensors `safe_open`) and loads the target's build products: no codegen, unless the products were
built for another host (torch version, CPU capability, ...), in which case it builds again from the
stored graph and says so (a warning and a report note).

Format versions: 2 (this one) adds build products and graph state (causal LMs take position ids and a
mask); version 1 artifacts are refused with a message saying how to re-create them.
"""
from __future__ import annotations
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

FORMAT = "slimgraph-artifact"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (2,)
MANIFEST, GRAPH, WEIGHTS = "manifest.json", "graph.sgir", "weights.safetensors"

# manifest key -> JSON type(s) it must have
SCHEMA = {"format": str, "format_version": int, "slimgraph_version": str, "torch_version": str,
          "target": str, "pipeline": str, "inputs": list, "outputs": list, "signature": dict,
          "kv": (dict, type(None)), "weight_aliases": dict, "weight_layouts": dict, "report": dict, "products": dict, "files": dict, "checksum": str}


class ArtifactError(ValueError):
    pass


# ---- save -------------------------------------------------------------------------------------
def save(compiled, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write(compiled, tmp)
        _share_per_umask(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(compiled, d: Path):
    import torch
    from safetensors.torch import save_file
    import slimgraph
    graph = compiled.graph
    (d / GRAPH).write_text(graph.__str__(), encoding="utf-8")
    from .ir import progress
    tensors, aliases, layouts = _weights_to_store(graph)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    # safetensors writes in one call: the bar shows the step and its size on large models
    with progress.bar(nbytes, f"artifact: writing {WEIGHTS}", "B", unit_scale=True,
                      enabled=None if nbytes > (64 << 20) else False) as bar:
        save_file(tensors, str(d / WEIGHTS), metadata={"format": "pt"})
        bar.update(nbytes)
    from .codegen.contract import ProductsError
    try:
        products = compiled.runner.products.write(d)
    except ProductsError as e:
        raise ArtifactError(f"target {compiled.target!r}: {e}") from None
    for name in products:
        if name in (GRAPH, WEIGHTS, MANIFEST):
            raise ArtifactError(f"target {compiled.target!r} build product {name!r} clashes with the artifact layout")
    kv = compiled.kv.to_dict() if compiled.kv is not None else None
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "slimgraph_version": slimgraph.__version__, "torch_version": torch.__version__,
        "target": compiled.target, "pipeline": compiled.pipeline or "",
        "inputs": [_sig(v) for v in graph.inputs], "outputs": [_sig(v) for v in graph.outputs],
        "signature": compiled.signature.to_json(), "kv": kv, "weight_aliases": aliases,
        "weight_layouts": layouts,
        "report": compiled.report.to_dict(),
        "products": {"files": products, "meta": compiled.runner.products.meta},
        "files": {name: _file_info(d / name) for name in (GRAPH, WEIGHTS, *products)},
    }
    manifest["checksum"] = _checksum(manifest)
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _weights_to_store(graph):
    """Tensors to write, aliases and layouts. A weight that is the very same view as an earlier one
    (tied embeddings) is stored once; a permuted view (e.g. a transposed parameter) is stored in its
    memory order with the permutation recorded, so it loads with the same strides (and matmuls sum
    in the same order); any other view sharing memory is copied."""
    tensors, aliases, layouts, seen, storages = {}, {}, {}, {}, set()
    for name, w in graph.weights.items():
        t = w.tensor.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        perm = sorted(range(t.dim()), key=lambda d: -t.stride(d))
        if not t.is_contiguous() and t.permute(perm).is_contiguous():
            t = t.permute(perm)
            layouts[name] = perm
        t = t.contiguous()
        if t.untyped_storage().data_ptr() in storages:  # overlaps a stored tensor: safetensors refuses
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return tensors, aliases, layouts


def _share_per_umask(d: Path) -> None:
    """mkdtemp makes the directory 0700 (and a library may write its files 0600): give the artifact the
    modes a plain mkdir/open would, 0777/0666 less the umask, since artifacts are meant to be shared."""
    mask = os.umask(0)
    os.umask(mask)
    for f in [d, *d.rglob("*")]:
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)


def _replace_dir(new: Path, path: Path):
    if not path.exists():
        os.rename(new, path)
        return
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path} exists and is not a slimgraph artifact; refusing to overwrite it")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _sig(v) -> dict:
    return {"name": v.name, "type": str(v.type)}


def _file_info(p: Path) -> dict:
    return {"sha256": _sha256(p), "size": p.stat().st_size}


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---- load -------------------------------------------------------------------------------------
def load(path):
    """A CompiledModel from an artifact directory; refuses a corrupt or unsupported one."""
    from .compiled import CompiledModel, OptimizeReport
    from .signature import Signature
    path = Path(path)
    manifest = read_manifest(path)
    _check_files(path, manifest)
    graph = _read_graph(path, manifest)
    from .targets.base import get_target
    try:
        target = get_target(manifest["target"])
    except ValueError as e:
        raise ArtifactError(f"{path / MANIFEST}: {e}") from None
    from .codegen.contract import Products, ProductsError
    unlisted = [n for n in manifest["products"].get("files", []) if n not in manifest["files"]]
    if unlisted:
        raise ArtifactError(f"{path / MANIFEST}: build products {unlisted} have no hashed entry in 'files'")
    products = Products({n: path / n for n in manifest["products"].get("files", [])}, manifest["products"].get("meta", {}))
    try:
        runner, rebuilt = target.load_or_rebuild(graph, products)
    except ProductsError as e:
        raise ArtifactError(f"{path}: {e}") from None
    report = OptimizeReport.from_dict(manifest["report"])
    if rebuilt:
        import warnings
        report.notes.append(rebuilt)
        warnings.warn(f"{path}: {rebuilt}", stacklevel=2)
    for w in graph.weights.values():  # the runner holds what it runs; stored tensors reload on demand (save)
        w.release()
    return CompiledModel(graph, manifest["target"], manifest["pipeline"], runner,
                         signature=Signature.from_json(manifest["signature"]), kv=_kv(manifest["kv"]),
                         report=report)


def load_graph(path):
    """The artifact's checked graph with its weights (loaded on demand), without building the target's
    runner: for tools that read the weights (slimgraph.export)."""
    path = Path(path)
    manifest = read_manifest(path)
    _check_files(path, manifest)
    return _read_graph(path, manifest)


def read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise ArtifactError(f"no artifact directory at {path}")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{path} is not a slimgraph artifact: {MANIFEST} is missing")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e}); the artifact is corrupt: save it again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{mpath} is not a slimgraph manifest (format is not {FORMAT!r})")
    version = m.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        import slimgraph
        why = (" (version 1 artifacts predate declared graph state and build products: their causal-LM graphs "
               "take no position ids or mask)") if version == 1 else ""
        raise ArtifactError(f"{mpath}: artifact format_version {version!r} is not supported by slimgraph "
                            f"{slimgraph.__version__}, which reads format_version "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}{why}; load it with the slimgraph version "
                            "that wrote it, or re-create it: slimgraph.optimize(model, ...).save(path)")
    for key, types in SCHEMA.items():
        if key not in m:
            raise ArtifactError(f"{mpath}: required key {key!r} is missing; the manifest was edited or truncated")
        if not isinstance(m[key], types) or isinstance(m[key], bool):
            raise ArtifactError(f"{mpath}: key {key!r} has the wrong type ({type(m[key]).__name__})")
    if m["checksum"] != _checksum(m):
        raise ArtifactError(f"{mpath} was modified after it was written (its checksum does not match its "
                            "content); the artifact cannot be trusted: save it again")
    for name in (GRAPH, WEIGHTS):
        if name not in m["files"]:
            raise ArtifactError(f"{mpath}: no entry for {name} in 'files'")
    return m


def _check_files(path: Path, manifest: dict):
    for name, info in manifest["files"].items():
        p = path / name
        if Path(name).name != name:
            raise ArtifactError(f"{path / MANIFEST}: file entry {name!r} is not a plain file name")
        if not p.is_file():
            raise ArtifactError(f"artifact {path} is incomplete: {name} is missing")
        size = p.stat().st_size
        if size != info.get("size"):
            raise ArtifactError(f"{p} was modified or truncated: {size} bytes, the manifest says {info.get('size')}")
        if _sha256(p) != info.get("sha256"):
            raise ArtifactError(f"{p} was modified: its sha256 does not match the manifest")


def _read_graph(path: Path, manifest: dict):
    from safetensors import safe_open
    from .ir.parser import ParseError, parse_graph
    f = safe_open(str(path / WEIGHTS), framework="pt")
    stored, aliases = set(f.keys()), manifest["weight_aliases"]
    loaders = {}
    for name in stored:
        perm = manifest["weight_layouts"].get(name)
        inverse = sorted(range(len(perm)), key=perm.__getitem__) if perm else None
        loaders[name] = (lambda n=name, inv=inverse: f.get_tensor(n) if inv is None else f.get_tensor(n).permute(inv))
    for name, target in aliases.items():
        loaders[name] = loaders.get(target)
    try:
        graph = parse_graph((path / GRAPH).read_text(encoding="utf-8"), weights=loaders)
    except ParseError as e:
        raise ArtifactError(f"{path / GRAPH}: {e}") from None
    missing = [n for n in graph.weights if loaders.get(n) is None]
    if missing:
        raise ArtifactError(f"{path / WEIGHTS} lacks weights {missing[:5]} that {GRAPH} uses")
    got = {"inputs": [_sig(v) for v in graph.inputs], "outputs": [_sig(v) for v in graph.outputs]}
    for key in got:
        if got[key] != manifest[key]:
            raise ArtifactError(f"{path / GRAPH}: graph {key} {got[key]} differ from the manifest's {manifest[key]}")
    return graph


def _kv(d):
    if d is None:
        return None
    from .frontends.hf import KVLayout
    return KVLayout.from_dict(d)
