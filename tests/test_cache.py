"""slimgraph/cache.py: one rule for the cache root, and writes that never leave half a file."""
import os
import stat
from pathlib import Path

import pytest

from slimgraph import cache
from slimgraph.cache import atomic_write, cache_dir


def test_the_root_is_slimgraph_cache_dir_then_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SLIMGRAPH_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir("export") == tmp_path / "home" / ".cache" / "slimgraph" / "export"
    monkeypatch.setenv("XDG_CACHE_HOME", "")                     # empty counts as unset (XDG spec)
    assert cache_dir("c") == tmp_path / "home" / ".cache" / "slimgraph" / "c"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("tvm-cpu") == tmp_path / "xdg" / "slimgraph" / "tvm-cpu"
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir("tvm-cpu") == tmp_path / "mine" / "tvm-cpu"    # no "slimgraph" appended: it is the root
    assert not (tmp_path / "mine").exists()                         # naming a folder does not create it


def test_every_cache_of_slimgraph_uses_the_one_root(tmp_path, monkeypatch):
    from slimgraph.codegen.c import target as c_target
    from slimgraph.frontends import export_cache
    monkeypatch.delenv("SLIMGRAPH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert export_cache.cache_dir() == tmp_path / "slimgraph" / "export"
    assert c_target.cache_dir() == tmp_path / "slimgraph" / "c"


def test_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    dst = tmp_path / "entry.so"
    dst.write_bytes(b"old")
    assert atomic_write(dst, b"new") == dst and dst.read_bytes() == b"new"
    assert atomic_write(str(tmp_path / "other.txt"), b"x", fsync=True).read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.so", "other.txt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o666 & ~umask   # open()'s permissions, not mkstemp's 0600


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_content_and_removes_its_temp_file(tmp_path, monkeypatch, error):
    dst = tmp_path / "entry.so"
    dst.write_bytes(b"old")
    seen = []

    def failing_replace(src, target):
        seen.append(Path(src))
        assert Path(src).read_bytes() == b"new" and Path(src).parent == tmp_path   # same folder: a rename
        raise error

    monkeypatch.setattr(cache.os, "replace", failing_replace)
    with pytest.raises(type(error)):
        atomic_write(dst, b"new")
    assert dst.read_bytes() == b"old"
    assert seen and not seen[0].exists() and os.listdir(tmp_path) == ["entry.so"]


def test_a_missing_folder_is_an_oserror_naming_it(tmp_path):
    with pytest.raises(OSError, match="nope"):
        atomic_write(tmp_path / "nope" / "f", b"x")


def test_atomic_write_over_an_existing_file_keeps_its_permissions(tmp_path):
    """As open(path, "wb") would: a private 0600 model (save_onnx) stays private when written again."""
    dst = tmp_path / "model.onnx"
    dst.write_bytes(b"old")
    dst.chmod(0o600)
    atomic_write(dst, b"new")
    assert dst.read_bytes() == b"new" and stat.S_IMODE(dst.stat().st_mode) == 0o600
    dst.chmod(0o755)
    atomic_write(dst, b"newer")
    assert stat.S_IMODE(dst.stat().st_mode) == 0o755


def test_atomic_write_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    """As open(path, "wb") would: `out/model.onnx -> /data/models/v3.onnx` stays a link, and v3.onnx gets the bytes
    (written atomically in the target's folder)."""
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "v3.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "model.onnx"
    link.symlink_to(target)
    assert atomic_write(link, b"new") == link
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert os.listdir(tmp_path / "data") == ["v3.onnx"]


def test_a_tilde_is_expanded_and_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """`SLIMGRAPH_CACHE_DIR="~/sg"` from a .env file, a systemd unit or a Dockerfile reaches us unexpanded (no
    shell): it means the home folder, not a folder named "~" in the working directory. A relative
    $XDG_CACHE_HOME is invalid and ignored (XDG base directory spec); a relative $SLIMGRAPH_CACHE_DIR is taken
    from the working directory at the call and returned absolute."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", "~/sg")
    assert cache_dir("export") == tmp_path / "home" / "sg" / "export"
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", "rel")
    assert cache_dir("export") == tmp_path / "rel" / "export"
    monkeypatch.delenv("SLIMGRAPH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")
    assert cache_dir("c") == tmp_path / "home" / ".cache" / "slimgraph" / "c"
