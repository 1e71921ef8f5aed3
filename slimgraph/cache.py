"""Where slimgraph keeps its on-disk caches, and how it writes a file there without leaving half of one.

    cache_dir("tvm-cpu")              # Path: <root>/tvm-cpu (not created)
    atomic_write(path, data)          # path holds the old bytes or the new ones, never a mix
    blocking_file(path)               # the file standing where a folder of `path` must go, or None

The root is the first of:

    $SLIMGRAPH_CACHE_DIR              when set and not empty (a leading ~ is the home folder; a relative
                                      path is taken from the working directory)
    $XDG_CACHE_HOME/slimgraph         when XDG_CACHE_HOME is an absolute path (the XDG base directory spec:
                                      an empty or relative one is ignored)
    ~/.cache/slimgraph

and each cache lives in its own folder under it: export (frontends/export_cache.py), tvm-cpu
(codegen/tvm/target.py), c (codegen/c/target.py), triton (codegen/triton/cuda.py), listing (slimgraph/cli.py).
Every cache is only a cache: deleting the root costs the next run its rebuild, never a wrong answer.

Standard library only: `slimgraph --help` imports this without torch.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of cache `kind` (e.g. "export", "tvm-cpu"): <root>/<kind> with the root rule above.
    Read from the environment on every call (tests and tools set SLIMGRAPH_CACHE_DIR); never created here."""
    root = os.environ.get("SLIMGRAPH_CACHE_DIR")
    if root:   # "~/x" unexpanded (a .env file, a systemd unit: no shell) means the home folder
        root = os.path.abspath(os.path.expanduser(root))
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "slimgraph") if xdg and os.path.isabs(xdg) \
            else os.path.join(os.path.expanduser("~"), ".cache", "slimgraph")
    return Path(root) / kind


def blocking_file(path: str | os.PathLike) -> Path | None:
    """The nearest existing ancestor folder of `path` when it is not a folder (so nothing can be written at
    `path`: an output path under a file), else None. Checked before long work that ends in a write."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def atomic_write(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` through a temp file in the same folder (`.<name>.<pid>.<random>.tmp`) and
    `os.replace` it onto `path`: a reader sees the old file or the whole new one, never a part, and two
    processes writing the same path never share a temp file. On any error (including KeyboardInterrupt)
    the temp file is removed, `path` keeps its old content, and the error propagates (an unwritable or
    missing folder is an OSError). As with open(path, "wb"): a new file gets 0666 less the umask, an existing
    one keeps its permissions (a private 0600 file stays private), and a symlink stays a link while the file
    it points to is replaced (the temp file goes in that file's folder).
    `fsync=True` also flushes the bytes to the disk before the rename (survives a power cut, costs a disk
    sync). Returns `path` as a Path."""
    path = Path(path)
    dst = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        keep = stat.S_IMODE(os.stat(dst).st_mode)
    except OSError:   # a new file
        keep = None
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if keep is not None:
                os.fchmod(f.fileno(), keep)
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
