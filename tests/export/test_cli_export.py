"""`slimgraph export`: the artifact on disk to a GGUF file / checkpoint, errors in one line."""
import pytest

from slimgraph.cli import main


def test_export_gguf_and_checkpoint(tiny_source, compile_tiny, tmp_path, capsys):
    art = tmp_path / "m.sg"
    compile_tiny("bits=4,group=32,sym=true").save(art)
    out = tmp_path / "m.Q4_0.gguf"
    assert main(["export", str(art), "--format", "gguf", "--type", "q4_0", "--source", str(tiny_source[2]),
                 "-o", str(out)]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    assert main(["export", str(art), "--format", "gptq", "--source", str(tiny_source[2]),
                 "-o", str(tmp_path / "gptq")]) == 0
    assert (tmp_path / "gptq" / "model.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--format", "gguf", "--type", "q4_1"], None),
    (["--format", "gguf", "--type", "q4_0"], "does not fit GGUF q4_0"),
    (["--format", "gguf", "--type", "q3_k"], "unknown GGUF type"),
    (["--format", "gptq", "--type", "q4_0"], "--type and --float-type are GGUF options"),
])
def test_export_errors(tiny_source, compile_tiny, tmp_path, capsys, args, message):
    art = tmp_path / "m.sg"
    compile_tiny("bits=4,group=32,sym=false").save(art)
    rc = main(["export", str(art), *args, "--source", str(tiny_source[2]), "-o", str(tmp_path / "out")])
    if message is None:
        assert rc == 0
    else:
        assert rc == 2 and message in capsys.readouterr().err


def test_export_missing_artifact(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "gguf", "--source", "x", "-o", "y"]) == 2
    assert "no artifact directory" in capsys.readouterr().err
