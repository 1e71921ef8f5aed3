"""GGUF export's tokenizer.ggml.pre: llama.cpp splits text as the Hugging Face tokenizer.json does.

For each llama.cpp pre-tokenizer slimgraph recognizes (slimgraph/export/gguf_pre.py), a small byte-level
BPE is trained with that family's pre_tokenizer, exported with a tiny model, and llama.cpp's token ids
are compared with transformers' on probes full of digits, contractions, whitespace runs, punctuation,
non-ASCII and newlines; the same file with "default" tokenizes some probe differently."""
import json
import unittest.mock

import pytest
import torch

from slimgraph.export import gguf_pre, to_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PROBES = ["12345 678 2024-01-31 3.14159 1000000", "I'm, they'll, DON'T, we've, she'd, it's, YOU'RE",
          "a  b   c    d\t\te\n\n\nf \n g  \n", "Hello!!! (world)... {x: [1, 2]}; a->b, c==d?",
          "naïve café 日本語 Ünïcödé — “quotes” ½ ٣٤", "line one\nline two\r\nline three\n\n  indented"]

# The released families' tokenizer.json regexes, spelled out here (not taken from gguf_pre) so that a
# wrong string in the registry fails the detection assertion.
LLAMA3_JSON = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_JSON = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _families():
    pt, Regex = tokenizers.pre_tokenizers, tokenizers.Regex
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    split_then_bytes = lambda r: pt.Sequence([pt.Split(Regex(r), "isolated"),   # noqa: E731
                                              pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    return {   # llama.cpp name -> (pre_tokenizer as the family's tokenizer.json has it, BPE ignore_merges)
        "gpt-2": (byte_level, False),
        "smollm": (pt.Sequence([pt.Digits(individual_digits=True), byte_level]), False),
        "llama-bpe": (split_then_bytes(LLAMA3_JSON), True),    # Llama 3's BPE ignores merges, as llama.cpp does
        "qwen2": (split_then_bytes(QWEN2_JSON), False),
    }


def _train(pre, ignore_merges):
    """A 800-token byte-level BPE with pre-tokenizer `pre`, trained on calibration text and the probes
    (so that it has merges across the places where pre-tokenizers split differently)."""
    from slimgraph.evaluate import load_text
    t = tokenizers.Tokenizer(tokenizers.models.BPE(ignore_merges=ignore_merges))
    t.pre_tokenizer = pre
    t.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=800, min_frequency=2, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    t.train_from_iterator([load_text("calib")[:20000] + "\n".join(PROBES * 30)], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_model():
    """A 1-layer Llama with 832 embedding rows (the tokenizers' 800 + padding); exported as f32, uncompiled."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=832, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _export(model, tok, d):
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return to_gguf(model, d / "m.gguf", type="f32", source=d)


def _vocab(llama_cpp, path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _mismatches(llm, tok, probes=PROBES):
    return [p for p in probes if llm.tokenize(p.encode(), add_bos=False, special=False)
            != tok(p, add_special_tokens=False).input_ids]


@pytest.mark.parametrize("name", list(_families()))
def test_pre_tokenizer_family(llama_cpp, tiny_model, tmp_path, name):
    pre, ignore_merges = _families()[name]
    tok = _train(pre, ignore_merges)
    path = _export(tiny_model, tok, tmp_path)
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == name
    assert _mismatches(_vocab(llama_cpp, path), tok) == []
    # the family matters: llama.cpp's "default" (what every export wrote before) tokenizes some probe
    # otherwise. (Not every other name does: a vocabulary trained on single digits, as qwen2's and smollm's
    # are, has no multi-digit tokens, so llama-bpe's 3-digit groups or gpt-2's digit runs end up the same.)
    with unittest.mock.patch.object(gguf_pre, "detect", lambda d: ("default", None)):
        wrong = to_gguf(tiny_model, tmp_path / "default.gguf", type="f32", source=tmp_path)
    assert gguf.GGUFReader(str(wrong)).fields["tokenizer.ggml.pre"].contents() == "default"
    assert _mismatches(_vocab(llama_cpp, wrong), tok), f"{name}'s tokenizer as 'default' tokenizes all probes alike"


def test_unknown_pre_tokenizer_warns(tiny_model, tmp_path):
    """A pre_tokenizer llama.cpp has no regexes for (here Whitespace; also a prefix space) is written as
    "default" with a warning naming the file, the pre_tokenizer and what llama.cpp does instead."""
    pt = tokenizers.pre_tokenizers
    for pre, shown in [(pt.Sequence([pt.WhitespaceSplit(), pt.ByteLevel(add_prefix_space=False, use_regex=False)]),
                        '"type": "WhitespaceSplit"'),
                       (pt.ByteLevel(add_prefix_space=True, use_regex=True), '"add_prefix_space": true')]:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        with pytest.warns(UserWarning, match=r"tokenizer.json's pre_tokenizer .*matches none of the llama.cpp "
                                             r"pre-tokenizers.*written as 'default'.*generic regexes") as w:
            path = _export(tiny_model, _train(pre, False), d)
        assert str(d / "tokenizer.json") in str(w[0].message) and shown in str(w[0].message)
        assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "default"


def test_splits_of():
    assert gguf_pre.splits_of(None) == ()
    assert gguf_pre.splits_of({"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}) == ()
    assert gguf_pre.splits_of({"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Removed",
                               "invert": False}) is None
    assert gguf_pre.splits_of({"type": "Metaspace"}) is None


def test_smollm2_tokenizer(llama_cpp, tmp_path):
    """SmolLM2 (the zoo's packaged GGUF, tokenizer.ggml.pre = "smollm"). transformers rebuilds its tokenizer
    from the GGUF with a plain ByteLevel pre_tokenizer: that is detected as "gpt-2" and llama.cpp then
    tokenizes as that tokenizer does. With SmolLM2's own pre_tokenizer (Digits(individual) then
    ByteLevel, as its tokenizer.json on the Hub has) it is detected as "smollm", and the export tokenizes
    exactly as the shipped GGUF does, where the "gpt-2" reading differs (½, ٣٤: numbers outside 0-9)."""
    from slimgraph.export.source import Source
    src = Source.of("smollm2-135m")
    tok = src.tokenizer
    shipped = _vocab(llama_cpp, src.gguf_path)
    assert gguf.GGUFReader(str(src.gguf_path)).fields["tokenizer.ggml.pre"].contents() == "smollm"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()

    d = tmp_path / "as_converted"
    path = _export(model, tok, d)
    assert json.loads((d / "tokenizer.json").read_text())["pre_tokenizer"]["type"] == "ByteLevel"
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert _mismatches(_vocab(llama_cpp, path), tok) == []
    assert _mismatches(shipped, tok) == [PROBES[4]]

    pt = tokenizers.pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True),
                                                       pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    path = _export(model, tok, tmp_path / "hub")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "smollm"
    ours = _vocab(llama_cpp, path)
    assert _mismatches(ours, tok) == [] and _mismatches(shipped, tok) == []
    for p in PROBES:
        assert ours.tokenize(p.encode(), add_bos=False) == shipped.tokenize(p.encode(), add_bos=False)


def _tokenizer_of(model, pre, decoder, special):
    from slimgraph.evaluate import load_text
    t = tokenizers.Tokenizer(model)
    t.pre_tokenizer, t.decoder = pre, decoder
    trainer = (tokenizers.trainers.WordPieceTrainer if isinstance(model, tokenizers.models.WordPiece)
               else tokenizers.trainers.BpeTrainer)(vocab_size=400, special_tokens=special, show_progress=False)
    t.train_from_iterator([load_text("calib")[:5000]], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token=special[0])


def test_tokenizers_llama_cpp_cannot_read_are_refused_by_what_they_are(tiny_model, tmp_path):
    """A tokenizer.json that is not a GPT-2 style byte-level BPE (and no tokenizer.model beside it) is refused
    with the file and what it is, never a TypeError from inside gguf's reader."""
    from slimgraph.export.weights import ExportError
    pt, dec, models = tokenizers.pre_tokenizers, tokenizers.decoders, tokenizers.models
    cases = {
        "wordpiece": (_tokenizer_of(models.WordPiece(unk_token="[UNK]"), pt.BertPreTokenizer(), dec.WordPiece(),
                                    ["[UNK]", "[CLS]", "[SEP]"]), r"holds a WordPiece model \(a BERT-style tokenizer\)"),
        "metaspace": (_tokenizer_of(models.BPE(unk_token="<unk>"), pt.Metaspace(), dec.Metaspace(), ["<unk>"]),
                      r"SentencePiece-style BPE \(pre_tokenizer Metaspace.*put that file next to it"),
        "no_decoder": (_tokenizer_of(models.BPE(), pt.ByteLevel(add_prefix_space=False), None, ["<|endoftext|>"]),
                       r"a BPE with decoder None, not ByteLevel"),
    }
    for name, (tok, match) in cases.items():
        d = tmp_path / name
        with pytest.raises(ExportError, match=r"tokenizer is neither a GPT-2 style BPE.*" + match +
                                               r".*export from a GGUF source instead"):
            _export(tiny_model, tok, d)
        assert not (d / "m.gguf").exists()
    # added tokens whose ids leave a gap after the vocabulary: gguf's ValueError, as an ExportError
    d = tmp_path / "gap"
    tok = _train(pt.ByteLevel(add_prefix_space=False, use_regex=True), False)
    tiny_model.save_pretrained(d)
    tok.save_pretrained(d)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["added_tokens"].append({**tj["added_tokens"][0], "id": 820, "content": "<|gap|>"})
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ExportError, match=r"gap's BPE tokenizer cannot be carried into GGUF: Expected the 1 added"):
        to_gguf(tiny_model, d / "m.gguf", type="f32", source=d)


def test_the_command_line_shows_the_warning_as_its_own_line(tiny_model, tmp_path):
    """`slimgraph export` prints slimgraph's warnings like its errors: no library file, line number or code."""
    import subprocess
    import sys
    import slimgraph
    pt = tokenizers.pre_tokenizers
    d = tmp_path / "src"
    tiny_model.save_pretrained(d)
    _train(pt.Sequence([pt.ByteLevel(add_prefix_space=False, use_regex=True), pt.Digits(individual_digits=True)]),
           False).save_pretrained(d)
    slimgraph.optimize(tiny_model).save(tmp_path / "m.sg")
    p = subprocess.run([sys.executable, "-m", "slimgraph.cli", "export", tmp_path / "m.sg", "--format", "gguf",
                        "--type", "f32", "--source", d, "-o", tmp_path / "m.gguf"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("slimgraph export: warning: export: ") and "written as 'default'" in line
    assert "UserWarning" not in p.stderr and ".py:" not in p.stderr


def test_an_output_path_no_writer_can_use_is_refused_before_any_work(tiny_model, tmp_path):
    from slimgraph.export import ExportError, export
    tiny_model.save_pretrained(tmp_path / "src")
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ExportError, match=r"folder is a folder, and a GGUF model is one file.*folder/model.gguf"):
        to_gguf(tiny_model, tmp_path / "folder", type="f32", source=tmp_path / "src")
    for fmt in ("gguf", "compressed-tensors", "gptq"):
        with pytest.raises(ExportError, match=r"file.txt is a file, so .* cannot be written under it"):
            export(tiny_model, tmp_path / "file.txt" / "out", format=fmt, source=tmp_path / "src")
    assert (tmp_path / "file.txt").read_text() == "mine" and list((tmp_path / "folder").iterdir()) == []
