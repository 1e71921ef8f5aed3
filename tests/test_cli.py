"""The `slimgraph` command line, run as a user runs it: in a subprocess."""
import json
import subprocess
import sys
import textwrap

import pytest

TINY_MLP = """
import torch
from torch import nn

def get_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    return model, (torch.randn(2, 8),)
"""

TINY_LLAMA = """
import torch, transformers

def get_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(cfg).eval(), (torch.randint(0, 64, (1, 5)),)
"""


def slimgraph(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "slimgraph.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"slimgraph {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
    return p


def write(path, source):
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    src = write(d / "mlp.py", TINY_MLP)
    p = slimgraph("compile", src, "--target", "torch", "--pipeline", "canonicalize,cse,dce", "-o", d / "out")
    assert "wrote" in p.stdout and "dce" in p.stdout  # the report lists the passes that ran
    return d / "out" / "model.sg"


def test_compile_writes_artifact(mlp_artifact):
    manifest = json.loads((mlp_artifact / "manifest.json").read_text())
    assert manifest["target"] == "torch"


def test_inspect_summarizes(mlp_artifact):
    out = slimgraph("inspect", mlp_artifact).stdout
    assert "'torch'" in out and "canonicalize" in out
    inputs_line = next(line for line in out.splitlines() if line.startswith("inputs:"))
    assert "%" in inputs_line and "f32[" in inputs_line
    ops_line = next(line for line in out.splitlines() if line.startswith("ops:"))
    assert "linear" in ops_line or "matmul" in ops_line
    weights_line = next(line for line in out.splitlines() if line.startswith("weights:"))
    assert "4 tensors" in weights_line  # two Linear layers: weight + bias each


def test_inspect_graph_prints_parseable_ir(mlp_artifact):
    from slimgraph.ir import parse_graph
    text = slimgraph("inspect", mlp_artifact, "--graph").stdout
    graph = parse_graph(text)
    assert len(graph.inputs) == 1 and len(graph.outputs) == 1


def test_bench_plain_model(mlp_artifact):
    out = slimgraph("bench", mlp_artifact, "--repeat", "3").stdout
    assert "latency median" in out and "peak RSS" in out


def test_compile_inspect_bench_causal_lm(tmp_path):
    pytest.importorskip("transformers")
    src = write(tmp_path / "llama.py", TINY_LLAMA)
    slimgraph("compile", src, "-o", tmp_path / "llama.sg")
    out = slimgraph("inspect", tmp_path / "llama.sg").stdout
    assert "kv cache: 2 layers x 2 heads x 8" in out
    assert "state:   4 append; e.g. state " in out        # read from the IR text, without torch
    out = slimgraph("bench", tmp_path / "llama.sg", "--prompt-len", "8", "--new-tokens", "8", "--repeat", "1").stdout
    assert "prefill:" in out and "tokens/s" in out
    decode = float(next(line for line in out.splitlines() if line.startswith("decode:")).split()[1])
    assert decode > 0 and "speculative" not in out


def test_ops_and_passes_listings():
    ops = slimgraph("ops").stdout.splitlines()
    assert any(line.startswith("add(a, b)") for line in ops) and len(ops) > 20
    passes = slimgraph("passes").stdout
    assert "dce" in passes and "canonicalize" in passes


@pytest.mark.parametrize("args, message", [
    (["compile", "no_such_file.py", "-o", "out"], "no such file"),
    (["compile", "not-a-zoo-model", "-o", "out"], "neither a .py file nor a zoo model"),
    (["inspect", "no/such/artifact.sg"], "no artifact directory"),
    (["bench", "no/such/artifact.sg"], "no artifact directory"),
])
def test_errors_are_one_line_exit_2(args, message):
    p = slimgraph(*args, check=False)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_bad_target_and_pipeline_name_the_valid_ones(tmp_path):
    src = write(tmp_path / "mlp.py", TINY_MLP)
    p = slimgraph("compile", src, "--target", "tpu", "-o", tmp_path, check=False)
    assert p.returncode == 2 and "tpu" in p.stderr and "torch" in p.stderr
    p = slimgraph("compile", src, "--pipeline", "dce,no-such-pass", "-o", tmp_path, check=False)
    assert p.returncode == 2 and "no-such-pass" in p.stderr and "Traceback" not in p.stderr


def test_source_without_get_model(tmp_path):
    src = write(tmp_path / "empty.py", "x = 1\n")
    p = slimgraph("compile", src, "-o", tmp_path, check=False)
    assert p.returncode == 2 and "get_model()" in p.stderr


@pytest.mark.parametrize("args", [["--debug", "inspect", "no/such/artifact.sg"],
                                  ["inspect", "no/such/artifact.sg", "--debug"],     # as the README says: add it
                                  ["inspect", "--debug", "no/such/artifact.sg"]])
def test_debug_shows_traceback_wherever_it_is_written(args):
    p = slimgraph(*args, check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr and "CliError: no artifact directory" in p.stderr


def test_pipeline_option_error_reads_like_the_passes_listing(mlp_artifact, tmp_path):
    src = write(tmp_path / "mlp.py", TINY_MLP)
    p = slimgraph("compile", src, "--pipeline", "canonicalize,quantize-weights{bitz=4}", "-o", tmp_path, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    first, *rest = p.stderr.strip().splitlines()
    assert first.startswith("slimgraph compile: error: pipeline item #2 'quantize-weights{bitz=4}': pass "
                            "'quantize-weights' has no option 'bitz' (did you mean 'bits'?)")
    listing = slimgraph("passes").stdout
    assert rest and all(line in listing for line in rest) and "    bits: int = 4" in rest
    p = slimgraph("compile", src, "--pipeline", "quantize-weights{bits=3}", "-o", tmp_path, check=False)
    assert p.returncode == 2 and "bits=3 is not supported; use bits=4" in p.stderr
    assert not (tmp_path / "model.sg").exists()


def test_compile_refuses_to_replace_without_force(tmp_path):
    src = write(tmp_path / "mlp.py", TINY_MLP)
    out = tmp_path / "m.sg"
    slimgraph("compile", src, "--pipeline", "dce", "-o", out)
    before = (out / "manifest.json").read_text()
    p = slimgraph("compile", src, "--pipeline", "canonicalize,dce", "-o", out, check=False)
    assert p.returncode == 2 and "already exists; pass --force to replace it" in p.stderr
    assert (out / "manifest.json").read_text() == before                 # untouched
    p = slimgraph("compile", src, "--pipeline", "canonicalize,dce", "-o", out, "--force")
    assert "replaced the artifact that was there" in p.stdout
    assert json.loads((out / "manifest.json").read_text())["pipeline"] == "canonicalize,dce"


def test_an_output_save_would_refuse_is_refused_before_optimizing(tmp_path):
    """-o at a file, under a file, or at a folder that is not an artifact (even with --force): refused before
    the model is loaded (optimizing and training can take minutes), naming -o."""
    src = write(tmp_path / "mlp.py", TINY_MLP.replace("def get_model():", "def get_model():\n    raise SystemExit(9)"))
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "folder.sg").mkdir()
    (tmp_path / "folder.sg" / "notes.txt").write_text("mine")
    for out, says in [(tmp_path / "file.txt", "file.txt is a file, but the artifact"),
                      (tmp_path / "file.txt" / "sub" / "m.sg", "file.txt is a file, but the artifact"),
                      (tmp_path / "folder.sg", "folder.sg exists and is not a slimgraph artifact"),
                      (tmp_path / "file.sg", None)]:
        if says is None:
            (tmp_path / "file.sg").write_text("mine")
            says = "file.sg exists and is not a slimgraph artifact"
        p = slimgraph("compile", src, "-o", out, "--force", check=False)
        assert p.returncode == 2 and f"-o {out}" in p.stderr and says in p.stderr, p.stderr
    assert (tmp_path / "file.txt").read_text() == "mine" and (tmp_path / "folder.sg" / "notes.txt").is_file()


GPTQ16 = "canonicalize,quantize-weights{bits=4,group=16,method=gptq},fuse-dequant-matmul"


def test_compile_with_calibration_token_ids(tmp_path):
    pytest.importorskip("transformers")
    import torch
    src = write(tmp_path / "llama.py", TINY_LLAMA)
    p = slimgraph("compile", src, "--pipeline", GPTQ16, "-o", tmp_path / "a.sg", check=False)
    assert p.returncode == 2 and "needs calibration data" in p.stderr and "--calibration" in p.stderr
    torch.save(torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0)), tmp_path / "ids.pt")
    slimgraph("compile", src, "--pipeline", GPTQ16, "--calibration", tmp_path / "ids.pt", "-o", tmp_path / "a.sg")
    ops = next(line for line in slimgraph("inspect", tmp_path / "a.sg").stdout.splitlines() if line.startswith("ops:"))
    assert "qlinear=14" in ops                  # 2 layers x (q, k, v, o, gate, up, down), GPTQ-calibrated
    (tmp_path / "notes.txt").write_text("plain text needs the model's tokenizer, which this model has none of")
    p = slimgraph("compile", src, "--pipeline", GPTQ16, "--calibration", tmp_path / "notes.txt", "-o",
                  tmp_path / "b.sg", check=False)
    assert p.returncode == 2 and "text was given, but no tokenizer could be found" in p.stderr


def test_calibration_file_formats(tmp_path):
    import numpy as np
    import torch
    from slimgraph.cli import CliError, load_calibration
    ids = torch.arange(600) % 50
    torch.save(ids, tmp_path / "a.pt")
    np.save(tmp_path / "a.npy", ids.view(3, 200).numpy().astype(np.int32))
    (tmp_path / "rows.txt").write_text("1 2 3 4\n5 6 7 8\n")
    (tmp_path / "flat.txt").write_text("1 2 3\n4 5\n")
    (tmp_path / "prose.txt").write_text("The quick brown fox.\n")
    a = load_calibration(str(tmp_path / "a.pt"))
    assert a.dtype == torch.int64 and a.shape == (2, 256) and torch.equal(a.flatten(), ids[:512])  # rows of 256
    b = load_calibration(str(tmp_path / "a.npy"))
    assert b.dtype == torch.int64 and b.shape == (3, 200)
    assert load_calibration(str(tmp_path / "rows.txt")).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert load_calibration(str(tmp_path / "flat.txt")).tolist() == [[1, 2, 3, 4, 5]]
    assert load_calibration(str(tmp_path / "prose.txt")) == "The quick brown fox.\n"   # tokenized by optimize
    torch.save(torch.randn(4, 8), tmp_path / "f.pt")
    with pytest.raises(CliError, match="token ids must be integers, got torch.float32"):
        load_calibration(str(tmp_path / "f.pt"))
    with pytest.raises(CliError, match="no such file"):
        load_calibration(str(tmp_path / "none.pt"))


NO_HEAVY_IMPORTS = """
import sys
from slimgraph.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:        # --help
    rc = e.code
heavy = sorted(m for m in ("torch", "transformers", "sympy", "onnx") if m in sys.modules)
print("HEAVY:", ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


def heavy_imports(*args, env_extra=None):
    import os
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout, p.stderr.rsplit("HEAVY:", 1)[1].strip()


def test_help_inspect_ops_passes_do_not_import_torch(mlp_artifact, tmp_path):
    """Start-up time: these commands need neither torch nor transformers (see the README's numbers)."""
    cache = {"SLIMGRAPH_CACHE_DIR": str(tmp_path / "cache")}
    assert heavy_imports("--help")[1] == ""
    out, heavy = heavy_imports("inspect", mlp_artifact)
    assert heavy == "" and "ops:" in out and "linear=2" in out and "weights: 4 tensors, 1.6 KiB" in out   # (8*32+32+32*4+4) f32
    assert heavy_imports("inspect", mlp_artifact, "--graph")[0].startswith("graph @")
    for cmd in ("passes", "ops"):
        first, _ = heavy_imports(cmd, env_extra=cache)          # builds the listing (imports the registries)
        again, heavy = heavy_imports(cmd, env_extra=cache)      # then reads it: no torch
        assert heavy == "" and again == first and len(first.splitlines()) > 5


def test_listing_cache_key_follows_the_sources(tmp_path, monkeypatch):
    from slimgraph import cli
    monkeypatch.setenv("SLIMGRAPH_CACHE_DIR", str(tmp_path))
    key = cli.listing_key()
    assert cli.listing_key() == key
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "passes_here.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "LISTING_PACKAGES", cli.LISTING_PACKAGES + ("fakepkg",))
    k1 = cli.listing_key()
    (pkg / "passes_here.py").write_text("X = 22\n")                 # an edited source: a new key
    assert cli.listing_key() != k1 != key
    calls = []
    assert cli._cached_listing("passes", lambda: calls.append(1) or "listing\n") == "listing\n"
    assert cli._cached_listing("passes", lambda: calls.append(1) or "other\n") == "listing\n" and calls == [1]


def test_bench_eval_ppl(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["[UNK]", "the", "a", "of", "is", "to", "and", "in", "be", "for"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    src = write(tmp_path / "llama.py", TINY_LLAMA)
    slimgraph("compile", src, "-o", tmp_path / "llama.sg")
    p = slimgraph("bench", tmp_path / "llama.sg", "--eval", "ppl", check=False, )
    assert p.returncode == 2 and "--eval ppl needs --tokenizer" in p.stderr
    out = slimgraph("bench", tmp_path / "llama.sg", "--new-tokens", "4", "--repeat", "1", "--eval", "ppl",
                    "--tokenizer", tmp_path / "tok", "--eval-tokens", "600").stdout
    ppl = float(next(line for line in out.splitlines() if line.startswith("perplexity:")).split()[1])
    assert 1 < ppl < 1e4


def test_a_pass_the_target_cannot_run_names_the_command_line_fallback(tmp_path):
    """The refusal names the fix in the caller's spelling: `--allow-fallback` on the command line, which then
    compiles for the 'torch' target and says so."""
    src = write(tmp_path / "llama.py", TINY_LLAMA)
    pipe = "canonicalize,linearize-attention{feature_map=elu,window=4},dce"
    p = slimgraph("compile", src, "--target", "onnx", "--pipeline", pipe, "-o", tmp_path / "a.sg", check=False)
    assert p.returncode == 2 and "linear_attention" in p.stderr and "--allow-fallback" in p.stderr
    assert not (tmp_path / "a.sg").exists()
    # --train-budget 0: this source has no tokenizer to train the inserted feature maps with (not the subject here)
    p = slimgraph("compile", src, "--target", "onnx", "--pipeline", pipe, "--allow-fallback", "--train-budget", 0,
                  "-o", tmp_path / "a.sg")
    assert "wrote" in p.stdout
    assert json.loads((tmp_path / "a.sg" / "manifest.json").read_text())["target"] == "torch"


# ---- trainable components the pipeline inserts (slimgraph/trainable.py): compile trains them ----------------
LINEARIZE = "canonicalize,linearize-attention{window=8}"


@pytest.fixture(scope="module")
def llama_ids(tmp_path_factory):
    """A tiny random Llama source (no tokenizer) and token ids for it: 4 rows of 48 tokens."""
    import torch
    d = tmp_path_factory.mktemp("train")
    torch.save(torch.randint(0, 64, (4, 48), generator=torch.Generator().manual_seed(1)), d / "ids.pt")
    return write(d / "llama.py", TINY_LLAMA), d / "ids.pt"


def _weights(artifact):
    from safetensors.torch import load_file
    return load_file(str(artifact / "weights.safetensors"))


def test_compile_trains_linearized_attention_and_reports_it(llama_ids, tmp_path):
    import torch
    src, ids = llama_ids
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--calibration", ids, "--train-budget", 2,
                  "-o", tmp_path / "la.sg")
    line = next(x for x in p.stdout.splitlines() if "trained attention feature maps" in x)
    assert "slimgraph.distill_attention" in line and "(144 tokens)" in line     # 3 training rows x 48 tokens
    assert "held-out relative MSE" in line and "trained in" in p.stdout
    assert "UNTRAINED" not in p.stdout + p.stderr and "WARNING" not in p.stderr
    wq = _weights(tmp_path / "la.sg")["linear_attention.0.wq"]
    assert not torch.equal(wq, torch.eye(8).expand_as(wq))                     # the maps left the identity
    out = slimgraph("inspect", tmp_path / "la.sg").stdout
    assert "trained attention feature maps" in out and "UNTRAINED" not in out


def test_train_budget_0_writes_untrained_maps_loudly_and_inspect_lists_them(llama_ids, tmp_path):
    import torch
    src, _ = llama_ids          # no tokenizer and no --calibration: fine, nothing is trained
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--train-budget", 0, "-o", tmp_path / "la.sg")
    assert "WARNING" in p.stderr and "UNTRAINED" in p.stderr and "--train-budget" in p.stderr
    assert "slimgraph.distill_attention" in p.stderr
    assert p.stderr.count("UNTRAINED") == 1                # the CLI's warning, not save()'s as well
    wq = _weights(tmp_path / "la.sg")["linear_attention.0.wq"]
    assert torch.equal(wq, torch.eye(8).expand_as(wq))
    out = slimgraph("inspect", tmp_path / "la.sg").stdout
    assert "UNTRAINED: attention feature maps of linearize-attention{window=8" in out
    p = slimgraph("bench", tmp_path / "la.sg", "--prompt-len", 8, "--new-tokens", 4, "--repeat", 1)
    assert "holds UNTRAINED attention feature maps" in p.stderr and "decode:" in p.stdout


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_compile_trains_draft_heads(llama_ids, tmp_path, kind):
    import torch
    src, ids = llama_ids
    pipe = f"canonicalize,insert-draft-heads{{num_heads=2,kind={kind}}}"
    p = slimgraph("compile", src, "--pipeline", pipe, "--train-budget", 0, "-o", tmp_path / "untrained.sg")
    assert "UNTRAINED" in p.stderr and "slimgraph.train_draft_heads" in p.stderr
    assert "UNTRAINED: draft heads" in slimgraph("inspect", tmp_path / "untrained.sg").stdout
    p = slimgraph("compile", src, "--pipeline", pipe, "--calibration", ids, "--train-budget", 2,
                  "-o", tmp_path / "trained.sg")
    line = next(x for x in p.stdout.splitlines() if "trained draft heads" in x)
    assert "slimgraph.train_draft_heads" in line and "positions" in line and "held-out top-1" in line
    assert "UNTRAINED" not in p.stdout + p.stderr
    assert "UNTRAINED" not in slimgraph("inspect", tmp_path / "trained.sg").stdout
    out = slimgraph("bench", tmp_path / "trained.sg", "--prompt-len", 8, "--new-tokens", 8, "--repeat", 1).stdout
    assert "(speculative, dynamic tree: " in out and "tokens per verify forward" in out   # what decode measured
    before, after = _weights(tmp_path / "untrained.sg"), _weights(tmp_path / "trained.sg")
    name = "draft_heads.0.weight" if kind == "medusa" else "draft_heads.eagle.fc.weight"
    assert not torch.equal(before[name], after[name])
    if kind == "medusa":
        assert not torch.equal(after[name], torch.zeros_like(after[name]))


def test_a_budget_too_small_for_one_update_writes_them_untrained_and_says_why(llama_ids, tmp_path):
    src, ids = llama_ids
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--calibration", ids, "--train-budget", "1e-9",
                  "-o", tmp_path / "la.sg")
    assert "WARNING" in p.stderr and "--train-budget 1e-09: no update fit in that budget" in p.stderr
    assert "trained attention feature maps" not in p.stdout
    assert "UNTRAINED: attention feature maps" in slimgraph("inspect", tmp_path / "la.sg").stdout


def test_training_without_a_tokenizer_or_ids_is_an_error_before_optimizing(llama_ids, tmp_path):
    src, _ = llama_ids
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "-o", tmp_path / "la.sg", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no tokenizer" in p.stderr and "--calibration ids.pt" in p.stderr and "--train-budget 0" in p.stderr
    assert "optimized" not in p.stdout and not (tmp_path / "la.sg").exists()
    (tmp_path / "prose.txt").write_text("Some calibration prose for a model without a tokenizer.\n")
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--calibration", tmp_path / "prose.txt",
                  "-o", tmp_path / "la.sg", check=False)
    assert p.returncode == 2 and "is text" in p.stderr and "no tokenizer" in p.stderr


def test_calibration_rows_too_short_to_train_the_maps_are_refused_up_front(tmp_path):
    import torch
    src = write(tmp_path / "llama.py", TINY_LLAMA)
    torch.save(torch.randint(0, 64, (4, 9)), tmp_path / "short.pt")
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--calibration", tmp_path / "short.pt",
                  "-o", tmp_path / "la.sg", check=False)
    assert p.returncode == 2 and "4 row(s) of 9 tokens" in p.stderr and "at least 10 tokens" in p.stderr
    assert "optimized" not in p.stdout
    p = slimgraph("compile", src, "--train-budget", -1, "-o", tmp_path / "x.sg", check=False)
    assert p.returncode == 2 and "--train-budget -1" in p.stderr


@pytest.mark.parametrize("pipe", [LINEARIZE, "canonicalize,quantize-weights{bits=4,group=32,method=gptq}"])
def test_calibration_ids_past_the_vocabulary_are_refused_up_front(tmp_path, pipe):
    import torch
    src = write(tmp_path / "llama.py", TINY_LLAMA)
    torch.save(torch.randint(64, 100, (4, 48)), tmp_path / "other.pt")      # ids of another tokenizer
    p = slimgraph("compile", src, "--pipeline", pipe, "--calibration", tmp_path / "other.pt",
                  "-o", tmp_path / "x.sg", check=False)
    assert p.returncode == 2 and "other.pt: holds token id" in p.stderr and "has 64 embedding rows" in p.stderr
    assert "optimized" not in p.stdout and "Traceback" not in p.stderr


def test_a_pipeline_without_trainable_passes_compiles_as_before(llama_ids, tmp_path):
    import json
    src, _ = llama_ids          # no tokenizer, no --calibration, a training budget: none of it matters here
    p = slimgraph("compile", src, "--pipeline", "canonicalize,cse,dce", "--train-budget", 5, "-o", tmp_path / "a.sg")
    assert "trained" not in p.stdout and "UNTRAINED" not in p.stdout and p.stderr.strip() == ""
    report = json.loads((tmp_path / "a.sg" / "manifest.json").read_text())["report"]
    assert report["untrained"] == [] and report["trained"] == []
    assert "UNTRAINED" not in slimgraph("inspect", tmp_path / "a.sg").stdout


TOKENIZED_LLAMA = """
import torch, transformers

def get_model():
    return transformers.AutoModelForCausalLM.from_pretrained({d!r}).eval(), (torch.randint(0, 64, (1, 5)),)
"""


@pytest.fixture(scope="module")
def llama_with_tokenizer(tmp_path_factory):
    """A tiny random Llama saved with a small byte-level BPE tokenizer: a source whose tokenizer loads offline."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer
    from slimgraph.evaluate import load_text
    d = tmp_path_factory.mktemp("tokenized")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([load_text("calib")[:20000]], vocab_size=320, min_frequency=2,
                            special_tokens=["<|endoftext|>"])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return write(d / "llama.py", TOKENIZED_LLAMA.format(d=str(d / "model"))), tok


def test_a_text_calibration_of_any_length_trains_the_maps(llama_with_tokenizer, tmp_path):
    """A text --calibration shorter than distill_attention's own 12 x 1024 tokens is cut into rows and trains;
    one too short for the window is refused before optimizing, in tokens of text."""
    from slimgraph.evaluate import load_text
    src, tok = llama_with_tokenizer
    text = load_text("calib")[:3000]
    assert 200 < len(tok(text).input_ids) < 16 * 512
    (tmp_path / "prose.txt").write_text(text)
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--calibration", tmp_path / "prose.txt",
                  "--train-budget", 1, "-o", tmp_path / "la.sg")
    assert "trained attention feature maps" in p.stdout and "UNTRAINED" not in p.stdout + p.stderr
    (tmp_path / "short.txt").write_text("a b c d e f g h")
    p = slimgraph("compile", src, "--pipeline", LINEARIZE, "--calibration", tmp_path / "short.txt",
                  "-o", tmp_path / "short.sg", check=False)
    assert p.returncode == 2 and "short.txt: a text of" in p.stderr and "give a text of at least 20 tokens" in p.stderr
    assert "optimized" not in p.stdout and not (tmp_path / "short.sg").exists()
