"""The `c` target on whole models against the interpreter: a tiny Llama (fp32, int8, int4; a forward at a
fixed length with an empty cache), the real all-MiniLM-L6-v2, and the products built by their own Makefile
with gcc and run through the C driver program on input files."""
import os
import subprocess

import pytest
import torch

import slimgraph
from slimgraph.ir.interpreter import run
from tiny_lm import tiny_llama

SEQ = 8
BIND = f"bind-shapes{{dims=[batch=1,seq={SEQ},past=0]}}"


@pytest.fixture(scope="module")
def llama_graph():
    """The tiny Llama imported once (torch.export is the slow part); each test compiles a copy."""
    return slimgraph.optimize(tiny_llama(), target="reference", pipeline="").graph


def llama_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 96, (1, SEQ), generator=g)
    mask = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).tril()
    return [ids, torch.arange(SEQ)[None], mask] + [torch.zeros(1, 2, 0, 16)] * 4


@pytest.mark.parametrize("pipeline", ["canonicalize,cse,dce",
                                      "quantize-weights{bits=8},fuse-dequant-matmul,canonicalize,cse,dce",
                                      "quantize-weights{bits=4,group=32},fuse-dequant-matmul,canonicalize,cse,dce",
                                      "quantize-weights{bits=4,group=32,sym=false},canonicalize,cse,dce"])
def test_tiny_llama_logits_match_the_interpreter(llama_graph, pipeline):
    fast = slimgraph.optimize(llama_graph, target="c", pipeline=f"{BIND},{pipeline}")
    if "fuse" in pipeline:   # every linear but the (tied) lm head runs as qlinear from packed weights
        assert fast.graph.op_counts().get("qlinear", 0) == 14
    ins = llama_inputs()
    ref, got = run(fast.graph, *ins), fast.run(*ins)
    names = [v.name for v in fast.graph.outputs]
    assert names[0] == "logits" and got[0].shape == (1, SEQ, 96)
    for name, a, b in zip(names, ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert got[0].abs().max() > 1e-3                    # not a degenerate all-zero output


def test_tiny_llama_fp32_matches_transformers(llama_graph):
    model = tiny_llama()                        # seeded: the same weights as llama_graph's
    fast = slimgraph.optimize(llama_graph, target="c", pipeline=f"{BIND},canonicalize,cse,dce")
    ins = llama_inputs(1)
    with torch.no_grad():
        ref = model(ins[0]).logits
    torch.testing.assert_close(fast.run(*ins)[0], ref, atol=1e-4, rtol=1e-4)


def _write_inputs(d, names, tensors):
    paths = []
    for n, t in zip(names, tensors):
        p = d / f"{n}.bin"
        t.contiguous().numpy().tofile(p)
        paths.append(str(p))
    return paths


def test_products_build_with_make_and_the_driver_matches_the_interpreter(llama_graph, tmp_path):
    """The must-show: products -> `make` (gcc, no Python at build or run time) -> ./slimgraph_driver on input
    files -> output files equal to the interpreter's outputs."""
    fast = slimgraph.optimize(llama_graph, target="c",
                              pipeline=f"{BIND},quantize-weights{{bits=4,group=32}},fuse-dequant-matmul,canonicalize,cse,dce")
    out = tmp_path / "model"
    out.mkdir()
    files = fast.runner.products.write(out)
    assert {"model.c", "model.h", "slimgraph_kernels.c", "slimgraph_kernels.h", "main.c", "Makefile",
            "README.txt", "weights.bin"} <= set(files)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CFLAGS")}
    r = subprocess.run(["make", "CFLAGS=-O2 -Wall -Wextra -Werror=implicit-function-declaration"], cwd=out,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (out / "libslimgraph_model.a").is_file() and (out / "slimgraph_driver").is_file()
    assert "warning" not in r.stderr, r.stderr
    ins = llama_inputs(2)
    g = fast.graph
    in_paths = _write_inputs(out, [v.name for v in g.inputs], ins)
    out_paths = [str(out / f"OUT_{v.name}.bin") for v in g.outputs]
    r = subprocess.run(["./slimgraph_driver", "weights.bin", *in_paths, *out_paths], cwd=out,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for v, ref, p in zip(g.outputs, run(g, *ins), out_paths):
        got = torch.from_numpy(__import__("numpy").fromfile(p, dtype="float32")).reshape(ref.shape)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"{v.name}: {m}")
    # bad arguments: usage with the signature; a wrong-sized input file: named
    r = subprocess.run(["./slimgraph_driver"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr and "input_ids" in r.stderr and "[1,8]" in r.stderr
    bad = list(in_paths)
    bad[0] = str(out / "short.bin")
    (out / "short.bin").write_bytes(b"\0" * 8)
    r = subprocess.run(["./slimgraph_driver", "weights.bin", *bad, *out_paths], cwd=out, capture_output=True, text=True)
    assert r.returncode == 2 and "has 8 bytes, expected 64" in r.stderr


def test_artifact_is_a_buildable_folder_and_loads_without_codegen(llama_graph, tmp_path, monkeypatch):
    fast = slimgraph.optimize(llama_graph, target="c", pipeline=f"{BIND},canonicalize,cse,dce")
    fast.save(tmp_path / "m.sg")
    assert (tmp_path / "m.sg" / "Makefile").is_file() and (tmp_path / "m.sg" / "weights.bin").is_file()
    from slimgraph.codegen.c import target as ct
    monkeypatch.setattr(ct, "build", lambda *a, **k: pytest.fail("load must not run codegen"))
    loaded = slimgraph.load(tmp_path / "m.sg")
    ins = llama_inputs(3)
    torch.testing.assert_close(loaded.run(*ins)[0], fast.run(*ins)[0])


@pytest.mark.slow
@pytest.mark.real_model
def test_real_minilm_matches_the_interpreter_and_transformers(minilm, tmp_path):
    model, tok = minilm
    enc = tok(["a compiled sentence embedding for an embedded host", "short"], padding="max_length",
              max_length=32, return_tensors="pt")
    fast = slimgraph.optimize(model, (), example_kwargs=dict(enc), target="c",
                              pipeline="bind-shapes{dims=[batch=2,seq=32]},canonicalize,cse,dce")
    flat = [enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]]
    ref, got = run(fast.graph, *flat), fast.run(*flat)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        hf = model(**enc)
    torch.testing.assert_close(fast(**enc).last_hidden_state, hf.last_hidden_state, atol=1e-4, rtol=1e-4)
    # and through the C driver, built by make from the saved folder
    out = tmp_path / "minilm"
    out.mkdir()
    fast.runner.products.write(out)
    assert subprocess.run(["make", "-s"], cwd=out, capture_output=True).returncode == 0
    paths = _write_inputs(out, [v.name for v in fast.graph.inputs], flat)
    outs = [str(out / f"OUT_{i}.bin") for i in range(len(fast.graph.outputs))]
    r = subprocess.run(["./slimgraph_driver", "weights.bin", *paths, *outs], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import numpy as np
    hidden = torch.from_numpy(np.fromfile(outs[0], dtype=np.float32)).reshape(ref[0].shape)
    torch.testing.assert_close(hidden, ref[0], atol=1e-4, rtol=1e-4)


def test_tiny_llama_decode_step_with_a_cache(llama_graph):
    """past=5, seq=1: one decode step that reads the cache and returns it grown by one row."""
    fast = slimgraph.optimize(llama_graph, target="c", pipeline="bind-shapes{dims=[batch=1,seq=1,past=5]},"
                              "canonicalize,cse,dce")
    g = torch.Generator().manual_seed(4)
    ins = [torch.randint(0, 96, (1, 1), generator=g), torch.tensor([[5]]), torch.ones(1, 1, 1, 6, dtype=torch.bool)]
    ins += [torch.randn(1, 2, 5, 16, generator=g) for _ in range(4)]
    ref, got = run(fast.graph, *ins), fast.run(*ins)
    assert got[1].shape == (1, 2, 6, 16)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_example_script_runs():
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[3]
    p = subprocess.run([sys.executable, str(root / "examples" / "c_target.py")], capture_output=True, text=True,
                       cwd=root, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ok: compiled to C, built with make, ran the driver on a file" in p.stdout


@pytest.mark.slow
def test_cli_compile_leaves_a_folder_that_make_builds(tmp_path):
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "mlp.sg"
    p = subprocess.run([sys.executable, "-m", "slimgraph.cli", "compile", str(root / "examples" / "tiny_mlp.py"),
                        "--target", "c", "-o", str(out)], capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    r = subprocess.run(["make", "-s"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["./slimgraph_driver"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 2 and "input  0 x" in r.stderr and "[4,16]" in r.stderr
