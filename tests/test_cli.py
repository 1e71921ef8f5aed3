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
    assert "kv cache: 2 layers x 2 heads x 8" in slimgraph("inspect", tmp_path / "llama.sg").stdout
    out = slimgraph("bench", tmp_path / "llama.sg", "--prompt-len", "8", "--new-tokens", "8", "--repeat", "1").stdout
    assert "prefill:" in out and "tokens/s" in out
    decode = float(next(line for line in out.splitlines() if line.startswith("decode:")).split()[1])
    assert decode > 0


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


def test_debug_shows_traceback():
    p = slimgraph("--debug", "inspect", "no/such/artifact.sg", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr


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
