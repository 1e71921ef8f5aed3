"""GGUF export: slimgraph's codes land bit for bit in ggml's blocks, misfits are named errors, and
the files load in transformers' GGUF reader and in llama.cpp."""
import numpy as np
import pytest
import torch

from slimgraph.export import ExportError, model_weights, to_gguf
from slimgraph.export.gguf import _llama_permute, fitting_types
from slimgraph.export.weights import Packed

gguf = pytest.importorskip("gguf")

SYM, ASYM, INT8 = "bits=4,group=32,sym=true", "bits=4,group=32,sym=false", "bits=8,group=32,sym=true"
ASYM_FLOAT = "bits=4,group=32,sym=false,zero_point=float"   # float minimum per group: Q4_1's own form


def f16_scales(p: Packed) -> Packed:
    return Packed(p.qweight, p.scales.half().float(), p.zeros, p.bits, p.group)


def read(path):
    r = gguf.GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


def gguf_weight(t, n_head=None):
    """A GGUF tensor dequantized to [out, in] (q/k rows un-permuted when n_head is given)."""
    w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
    if n_head is not None:
        rows = w.shape[0]
        fwd = torch.arange(rows).view(n_head, 2, rows // n_head // 2).transpose(1, 2).reshape(rows)
        w = w[torch.argsort(fwd)]
    return w


@pytest.mark.parametrize("opts, gtype", [(SYM, "q4_0"), (ASYM, "q4_1"), (ASYM_FLOAT, "q4_1"), (INT8, "q8_0"),
                                         (SYM, "q8_0")])
def test_blocks_hold_slimgraph_weights(tiny_source, compile_tiny, tmp_path, opts, gtype):
    compiled = compile_tiny(opts)
    path = to_gguf(compiled, tmp_path / f"m.{gtype}.gguf", type=gtype, source=tiny_source[2])
    r, tensors = read(path)
    weights = model_weights(compiled)
    p = weights["model.layers.1.mlp.down_proj.weight"]
    assert isinstance(p, Packed)
    t = tensors["blk.1.ffn_down.weight"]
    assert t.tensor_type.name == gtype.upper()
    got, want = gguf_weight(t), f16_scales(p).dequantize()
    if gtype == "q4_1":   # the minimum m = -z * d is rounded to f16 too
        assert torch.allclose(got, want, rtol=0, atol=float(p.scales.max()) * 15 * 2 ** -10)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # q and k rows are in llama.cpp's rotary order: un-permuted they are slimgraph's
    q = tensors["blk.0.attn_q.weight"]
    want_q = f16_scales(weights["model.layers.0.self_attn.q_proj.weight"]).dequantize()
    assert not torch.allclose(gguf_weight(q), want_q, atol=1e-3)
    assert torch.allclose(gguf_weight(q, n_head=4), want_q, atol=float(p.scales.max()) * 15 * 2 ** -10)
    assert r.fields["general.file_type"].contents() == getattr(gguf.LlamaFileType, f"MOSTLY_{gtype.upper()}")


def test_embedding_and_norms(tiny_source, compile_tiny, tmp_path):
    path = to_gguf(compile_tiny(SYM), tmp_path / "m.gguf", type="q4_0", source=tiny_source[2], float_type="f16")
    r, tensors = read(path)
    assert tensors["token_embd.weight"].tensor_type.name == "F16"
    assert "output.weight" not in tensors          # tied, as the source
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    emb = tiny_source[0].model.embed_tokens.weight.detach()
    torch.testing.assert_close(torch.from_numpy(np.array(tensors["token_embd.weight"].data)).float(),
                               emb.half().float())
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 320


def test_misfit_names_the_types_that_fit(tiny_source, compile_tiny, tmp_path):
    with pytest.raises(ExportError, match=r"int4 g32 asym.*does not fit GGUF q4_0.*types that fit it: q4_1, q8_0"):
        to_gguf(compile_tiny(ASYM), tmp_path / "x.gguf", type="q4_0", source=tiny_source[2])
    with pytest.raises(ExportError, match=r"groups of 16 are not a multiple of the 32-weight block.*f16, f32"):
        to_gguf(compile_tiny("bits=4,group=16,sym=true"), tmp_path / "x.gguf", type="q4_0", source=tiny_source[2])
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))
    with pytest.raises(ExportError, match=r"does not fit GGUF q8_0.*re-quantize with quantize-weights\{bits=8,group=32,sym=true\}"):
        to_gguf(compile_tiny(ASYM_FLOAT), tmp_path / "x.gguf", type="q8_0", source=tiny_source[2])
    with pytest.raises(ExportError, match="unknown GGUF type 'q3_k'"):
        to_gguf(compile_tiny(SYM), tmp_path / "x.gguf", type="q3_k", source=tiny_source[2])
    with pytest.raises(ExportError, match="source model is needed"):
        to_gguf(compile_tiny(SYM), tmp_path / "x.gguf", type="q4_0")


def test_fitting_types():
    def packed(bits, group, sym, zero=8):
        q = torch.zeros(64, 64 if bits == 8 else 32, dtype=torch.int8 if bits == 8 else torch.uint8)
        s = torch.ones(64, 64 // (group or 64))
        z = None if sym else torch.full(s.shape, zero, dtype=torch.int8 if bits == 8 else torch.uint8)
        return Packed(q, s, z, bits, group)
    assert fitting_types(packed(4, 32, True)) == ["q4_0", "q4_1", "q8_0"]
    assert fitting_types(packed(4, 64, False)) == ["q4_1", "q8_0"]       # a group spans two blocks
    assert fitting_types(packed(4, 0, True)) == ["q4_0", "q4_1", "q8_0"]  # per row: 64 = two blocks
    assert fitting_types(packed(8, 32, True)) == ["q8_0"]
    assert fitting_types(packed(8, 32, False, zero=3)) == []
    assert fitting_types(packed(4, 16, True)) == []
    fz = packed(4, 32, False)
    assert fitting_types(Packed(fz.qweight, fz.scales, torch.full(fz.scales.shape, 7.25), 4, 32)) == ["q4_1"]


def test_permute_matches_transformers_inverse():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    w = torch.randn(12, 5)
    back = LlamaTensorProcessor()._reverse_permute_weights(_llama_permute(w, 3).numpy(), 3)
    torch.testing.assert_close(torch.from_numpy(back), w)


@pytest.mark.parametrize("opts, gtype", [(SYM, "q4_0"), (ASYM, "q4_1"), (ASYM_FLOAT, "q4_1"), (INT8, "q8_0")])
def test_transformers_gguf_loader_reads_the_same_weights(tiny_source, compile_tiny, tmp_path, opts, gtype):
    import transformers
    compiled = compile_tiny(opts)
    path = to_gguf(compiled, tmp_path / f"m.{gtype}.gguf", type=gtype, source=tiny_source[2], float_type="f32")
    m = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    sd = m.state_dict()
    for name, w in model_weights(compiled).items():
        if name not in sd:
            continue
        want = f16_scales(w).dequantize() if isinstance(w, Packed) else w
        atol = 0 if gtype != "q4_1" or not isinstance(w, Packed) else float(w.scales.max()) * 15 * 2 ** -10
        torch.testing.assert_close(sd[name], want, rtol=0, atol=atol, msg=name)


def _llama(llama_cpp, path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False, seed=0, **kw)


def _slimgraph_logits(compiled, ids):
    return compiled(torch.tensor([ids])).logits[0]


def test_llama_cpp_runs_the_export(llama_cpp, tiny_source, compile_tiny, tmp_path):
    """llama.cpp loads the exported file and computes what slimgraph computes from the same weights."""
    ids = tiny_source[1]("The build system configures the project.").input_ids[:12]
    for opts, gtype, tol in [("bits=8,group=32,sym=true", "q8_0", 0.05), (SYM, "q4_0", 0.1)]:
        compiled = compile_tiny(opts)
        path = to_gguf(compiled, tmp_path / f"m.{gtype}.gguf", type=gtype, source=tiny_source[2], float_type="f32")
        llm = _llama(llama_cpp, path, logits_all=True)
        llm.eval(ids)
        got = torch.tensor(np.array(llm.scores[:len(ids)]))
        want = _slimgraph_logits(compiled, ids)
        # llama.cpp quantizes activations to 8 bits for its quantized dot products: close, not equal
        rel = float((got - want).norm() / want.norm())
        assert rel < tol, f"{gtype}: llama.cpp logits differ from slimgraph's by {rel:.3f} (relative)"
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8
        # and it generates, deterministically
        outs = []
        for _ in range(2):
            llm.reset()
            outs.append([t for _, t in zip(range(6), llm.generate(ids, temp=0.0))])
        assert outs[0] == outs[1] and len(outs[0]) == 6


def test_export_shows_progress(tiny_source, compile_tiny, tmp_path, monkeypatch):
    """Long exports report progress through slimgraph's bars (ir/progress.py: a terminal, not --quiet)."""
    from slimgraph.ir import progress
    seen = []
    real = progress.bar

    def spy(total, desc, *a, **k):
        seen.append((desc, total))
        return real(total, desc, *a, **k)
    monkeypatch.setattr(progress, "bar", spy)
    to_gguf(compile_tiny(SYM), tmp_path / "m.gguf", type="q4_0", source=tiny_source[2])
    from slimgraph.export import to_gptq
    to_gptq(compile_tiny(SYM), tmp_path / "gptq", source=tiny_source[2])
    n = len(gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors)
    assert ("gguf: q4_0 blocks", n) in seen
    assert any(d == "checkpoint: packing" and t > 0 for d, t in seen)


# ---- architectures beyond Llama ----------------------------------------------------------------
ARCH_TENSORS = {   # model_type -> (GGUF architecture, tensors of its own that must be written)
    "qwen2": ("qwen2", ["blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias"]),
    "qwen3": ("qwen3", ["blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"]),
    "phi3": ("phi3", ["blk.0.attn_qkv.weight", "blk.1.ffn_up.weight"]),
    "gemma": ("gemma", ["blk.0.ffn_gate.weight"]),
    "gemma2": ("gemma2", ["blk.0.post_attention_norm.weight", "blk.1.post_ffw_norm.weight"]),
    "gemma3_text": ("gemma3", ["blk.0.attn_q_norm.weight", "blk.5.post_ffw_norm.weight"]),
    "granite": ("granite", ["blk.0.attn_q.weight"]),
    "olmo2": ("olmo2", ["blk.0.attn_q_norm.weight", "blk.1.post_ffw_norm.weight", "output.weight"]),
}
_arch_compiled = {}


def _compile_arch(tiny_arch_source, model_type, opts):
    if (model_type, opts) not in _arch_compiled:
        _arch_compiled[model_type, opts] = slimgraph_compile(tiny_arch_source(model_type)[0], opts)
    return _arch_compiled[model_type, opts]


@pytest.mark.parametrize("model_type", list(ARCH_TENSORS))
def test_llama_cpp_runs_other_archs(llama_cpp, tiny_arch_source, tmp_path, model_type):
    """Each architecture's export loads in llama.cpp and computes what slimgraph computes: a missed
    bias or q/k norm, a wrong q/k permutation (either way), Gemma's norms without their +1, Gemma2's
    soft-capping, Gemma2/3's sliding window (5 here) or Gemma3's sliding-layer rope base left out all
    put the logits 0.2 to 1.0 off (relative), well past the tolerances (Gemma3's one global layer with
    the sliding base: 0.06); Granite without its multipliers or OLMo2 without output.weight do not load."""
    model, tok, d = tiny_arch_source(model_type)
    ids = tok("The build system configures the project.").input_ids[:12]
    arch, own = ARCH_TENSORS[model_type]
    for opts, gtype, tol in [(INT8, "q8_0", 0.05), (SYM, "q4_0", 0.1)]:
        compiled = _compile_arch(tiny_arch_source, model_type, opts)
        path = to_gguf(compiled, tmp_path / f"m.{gtype}.gguf", type=gtype, source=d, float_type="f32")
        r, tensors = read(path)
        assert r.fields["general.architecture"].contents() == arch
        assert set(own) <= set(tensors), f"{model_type}: missing {set(own) - set(tensors)}"
        llm = _llama(llama_cpp, path, logits_all=True)
        llm.eval(ids)
        got = torch.tensor(np.array(llm.scores[:len(ids)]))
        want = _slimgraph_logits(compiled, ids).detach()
        rel = float((got - want).norm() / want.norm())
        assert rel < tol, f"{model_type} {gtype}: llama.cpp logits differ from slimgraph's by {rel:.3f} (relative)"
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_arch_layouts(tiny_arch_source, tmp_path):
    """What differs per architecture in the file: no q/k permutation but biases for qwen2, head_dim
    as key/value length for qwen3, Gemma's norms stored as 1 + w; a GGUF source of each names its arch."""
    for model_type in ("qwen2", "qwen3", "gemma"):
        compiled = _compile_arch(tiny_arch_source, model_type, SYM)
        path = to_gguf(compiled, tmp_path / f"{model_type}.gguf", type="q4_0", source=tiny_arch_source(model_type)[2])
        r, tensors = read(path)
        weights = model_weights(compiled)
        attn = "model.layers.0.self_attn"
        if model_type == "qwen2":   # q rows as slimgraph has them (llama would permute), bias as is
            want_q = f16_scales(weights[f"{attn}.q_proj.weight"]).dequantize()
            torch.testing.assert_close(gguf_weight(tensors["blk.0.attn_q.weight"]), want_q, rtol=0, atol=0)
            torch.testing.assert_close(torch.from_numpy(np.array(tensors["blk.0.attn_q.bias"].data)),
                                       weights[f"{attn}.q_proj.bias"].float())
        if model_type == "qwen3":
            assert r.fields["qwen3.attention.key_length"].contents() == 32
            assert r.fields["qwen3.attention.head_count"].contents() == 4
            assert tensors["blk.0.attn_q.weight"].shape.tolist() == [64, 128]   # 4 heads x 32
        if model_type == "gemma":
            torch.testing.assert_close(torch.from_numpy(np.array(tensors["blk.0.attn_norm.weight"].data)),
                                       weights["model.layers.0.input_layernorm.weight"].float() + 1)
            assert "output.weight" not in tensors
        # the file as a source: its architecture is read back and the same tensors are written
        again = to_gguf(compiled, tmp_path / f"{model_type}.again.gguf", type="q4_0", source=path)
        assert [t.name for t in read(again)[0].tensors] == [t.name for t in r.tensors]


def test_unsupported_arch_is_refused(compile_tiny, tmp_path):
    gpt2 = tmp_path / "gpt2"
    transformers = pytest.importorskip("transformers")
    transformers.GPT2Config(vocab_size=320, n_embd=64, n_layer=2, n_head=4).save_pretrained(gpt2)
    with pytest.raises(ExportError, match=r"supports the model types llama, mistral, qwen2, qwen3, phi3, gemma, "
                                          r"gemma2, gemma3_text, granite, olmo2 \(GGUF architectures llama, qwen2, "
                                          r"qwen3, phi3, gemma, gemma2, gemma3, granite, olmo2\); source .*gpt2.* is "
                                          r"'gpt2'.*--format gptq or compressed-tensors"):
        to_gguf(compile_tiny(SYM), tmp_path / "x.gguf", type="q4_0", source=gpt2)
    assert not (tmp_path / "x.gguf").exists()


def test_arch_checks(tiny_arch_source, tmp_path):
    """Gemma2 with a query scaling or layer pattern llama.cpp does not apply is refused; Phi-3's sliding
    window, which llama.cpp's phi3 ignores, is warned of; OLMo2, whose llama.cpp loader needs
    output.weight, gets the tied embedding's copy."""
    model, tok, d = tiny_arch_source("gemma2")
    cfg = model.config.__class__.from_pretrained(d)
    cfg.query_pre_attn_scalar = 7
    cfg.save_pretrained(tmp_path / "g2")
    tok.save_pretrained(tmp_path / "g2")
    compiled = _compile_arch(tiny_arch_source, "gemma2", SYM)
    with pytest.raises(ExportError, match=r"gemma2 with query_pre_attn_scalar 7 \(head_dim 16, 2 layers\).*"
                                          r"1/sqrt\(16\)"):
        to_gguf(compiled, tmp_path / "x.gguf", type="q4_0", source=tmp_path / "g2")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))
    cfg.query_pre_attn_scalar, cfg.layer_types = 16, ["full_attention", "sliding_attention"]
    cfg.save_pretrained(tmp_path / "g2")
    with pytest.raises(ExportError, match=r"gemma2 with layer_types \['full_attention', 'sliding_attention'\]: "
                                          r"llama.cpp's gemma2 makes the last layer of every 2 global"):
        to_gguf(compiled, tmp_path / "x.gguf", type="q4_0", source=tmp_path / "g2")
    model, tok, d = tiny_arch_source("phi3")   # llama.cpp's phi3 has no sliding window: said, not hidden
    cfg = model.config.__class__.from_pretrained(d)
    cfg.sliding_window = 5
    cfg.save_pretrained(tmp_path / "p3")
    tok.save_pretrained(tmp_path / "p3")
    with pytest.warns(UserWarning, match=r"phi3 source with sliding_window 5: llama.cpp's phi3 attends to the whole"):
        to_gguf(_compile_arch(tiny_arch_source, "phi3", SYM), tmp_path / "p3.gguf", type="q4_0", source=tmp_path / "p3")
    compiled = _compile_arch(tiny_arch_source, "olmo2", SYM)
    _, tensors = read(to_gguf(compiled, tmp_path / "o.gguf", type="q4_0", source=tiny_arch_source("olmo2")[2]))
    torch.testing.assert_close(gguf_weight(tensors["output.weight"]), gguf_weight(tensors["token_embd.weight"]))


def test_tokenizers_fill_the_embedding(llama_cpp, sentencepiece_source, tiny_arch_source, tmp_path):
    """A SentencePiece tokenizer.model is carried as llama.cpp's "llama" tokenizer (llama.cpp then
    tokenizes as sentencepiece does, byte fallback included), and a tokenizer with fewer tokens than
    the embedding has rows is padded with unused [PAD<i>] tokens (else llama.cpp refuses the file)."""
    model, sp, d = sentencepiece_source
    compiled = slimgraph_compile(model, INT8)
    path = to_gguf(compiled, tmp_path / "spm.gguf", type="q8_0", source=d, float_type="f32")
    r, _ = read(path)
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 400 and tokens[383] == sp.id_to_piece(383) and tokens[384:] == [f"[PAD{i}]" for i in
                                                                                          range(384, 400)]
    llm = _llama(llama_cpp, path, logits_all=True)
    text = "The build system configures the project: café, 42 Ω!"
    assert llm.tokenize(text.encode(), add_bos=False) == sp.encode(text)
    ids = sp.encode(text)[:12]
    llm.eval(ids)
    got, want = torch.tensor(np.array(llm.scores[:len(ids)])), _slimgraph_logits(compiled, ids).detach()
    assert float((got - want).norm() / want.norm()) < 0.05
    # the BPE tokenizer of the tiny qwen2: 320 tokens, 336 embedding rows; llama.cpp tokenizes as transformers
    _, tok, d = tiny_arch_source("qwen2")
    path = to_gguf(_compile_arch(tiny_arch_source, "qwen2", SYM), tmp_path / "q.gguf", type="q4_0", source=d)
    tokens = read(path)[0].fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 336 and tokens[320:] == [f"[PAD{i}]" for i in range(320, 336)]
    llm = _llama(llama_cpp, path, vocab_only=True)
    for text in [text, "  two  spaces\nnew line 12345 it's"]:
        assert llm.tokenize(text.encode(), add_bos=False) == tok(text, add_special_tokens=False).input_ids


def slimgraph_compile(model, opts):
    import slimgraph
    return slimgraph.optimize(model, pipeline=f"canonicalize,cse,dce,quantize-weights{{{opts}}},fuse-dequant-matmul")


# ---- rope scaling --------------------------------------------------------------------------------
# Tiny models whose scaling acts within the prompt: rope_theta 100 gives wavelengths of 6 to 350
# positions over head_dim 16, and an original context of 16-32 puts most of them in the scaled band.
ROPE_SCALINGS = {   # name -> (model_type, config, what the file carries)
    "llama3": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 100.0, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 32}}, "rope_freqs.weight"),
    "linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 100.0, "factor": 4.0}},
               "llama.rope.scaling.type"),
    "yarn": ("qwen2", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0,
                                           "original_max_position_embeddings": 16}, "max_position_embeddings": 64},
             "qwen2.rope.scaling.original_context_length"),
}
LONG_TEXT = ("The build system configures the project, then the compiler reads each source file and the "
             "linker joins the objects into one program that the tests run twice.")


def _rel(llama_cpp, path, ids, want):
    llm = _llama(llama_cpp, path, logits_all=True)
    llm.eval(ids)
    got = torch.tensor(np.array(llm.scores[:len(ids)]))
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_llama_cpp_runs_rope_scaling(llama_cpp, tiny_config_source, tmp_path, kind):
    """llama3 (rope_freqs), linear and yarn (rope.scaling.* keys) scaled models compute in llama.cpp what
    slimgraph computes over 40 positions; the same export without the scaling is clearly off."""
    model_type, config, carried = ROPE_SCALINGS[kind]
    model, tok, d = tiny_config_source(model_type, **config)
    ids = tok(LONG_TEXT).input_ids[:40]
    assert len(ids) == 40
    compiled = slimgraph_compile(model, INT8)
    want = _slimgraph_logits(compiled, ids).detach()
    path = to_gguf(compiled, tmp_path / "m.gguf", type="q8_0", source=d, float_type="f32")
    r, tensors = read(path)
    assert carried in set(r.fields) | set(tensors)
    rel = _rel(llama_cpp, path, ids, want)
    assert rel < 0.05, f"{kind}: llama.cpp logits differ from slimgraph's by {rel:.3f} (relative)"
    if kind == "llama3":   # the file as a source: its rope_freqs is copied (no model weight of that name)
        again = to_gguf(compiled, tmp_path / "again.gguf", type="q8_0", source=path, float_type="f32")
        np.testing.assert_array_equal(np.array(read(again)[1][carried].data), np.array(tensors[carried].data))
        assert not np.allclose(np.array(tensors[carried].data), 1.0)
    # the same weights with the config's rope left unscaled (what a file without the keys computes)
    plain = tmp_path / "plain"
    cfg = model.config.__class__.from_pretrained(d)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 100.0}
    cfg.save_pretrained(plain)
    tok.save_pretrained(plain)
    unscaled = to_gguf(compiled, tmp_path / "plain.gguf", type="q8_0", source=plain, float_type="f32")
    r, tensors = read(unscaled)
    assert carried not in set(r.fields) | set(tensors)
    off = _rel(llama_cpp, unscaled, ids, want)
    assert off > 4 * rel and off > 0.1, f"{kind}: without the scaling llama.cpp is only {off:.3f} off ({rel:.3f} with)"


def test_rope_scaling_refusals(tiny_config_source, tiny_arch_source, tmp_path):
    """Scalings llama.cpp cannot be told about are refused by name, with the file and the way out."""
    compiled = _compile_arch(tiny_arch_source, "qwen2", SYM)
    for model_type, rope, match in [
            ("qwen2", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 32}, r"rope scaling 'llama3' of source .* cannot be written "
                                                                r"to GGUF \(llama.cpp's qwen2 graph takes linear, yarn"),
            ("qwen2", {"rope_type": "dynamic", "factor": 2.0}, r"rope scaling 'dynamic'.*convert_hf_to_gguf.py"),
            ("qwen2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 8},
             r"yarn rope scaling of source .* with \{'beta_fast': 8\}: llama.cpp's qwen2 graph computes YaRN with "
             r"beta_fast 32")]:
        _, tok, d = tiny_arch_source(model_type)
        cfg = transformers_config(d)
        cfg.rope_parameters = {**rope, "rope_theta": 100.0}
        cfg.save_pretrained(tmp_path / "x")
        tok.save_pretrained(tmp_path / "x")
        with pytest.raises(ExportError, match=match):
            to_gguf(compiled, tmp_path / "x.gguf", type="q4_0", source=tmp_path / "x")
        assert not (tmp_path / "x.gguf").exists()


def transformers_config(d):
    import transformers
    return transformers.AutoConfig.from_pretrained(d)


@pytest.mark.parametrize("pipeline", [f"quantize-weights{{{SYM}}}", f"canonicalize,quantize-weights{{{SYM}}}"])
def test_a_models_own_sliding_window_exports_with_or_without_canonicalize(tmp_path, pipeline):
    """Mistral's own window is the source's: before canonicalize folds it into attention{window} it is a mask
    computed from %attention_mask by ordinary ops, and the export must not take it for a rewrite."""
    import transformers
    import slimgraph
    from slimgraph.export import to_gguf
    cfg = transformers.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=256, sliding_window=4, bos_token_id=0,
                                     eos_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "src")
    c = slimgraph.optimize(model, (torch.zeros(1, 4, dtype=torch.long),), target="torch", pipeline=pipeline)
    to_gguf(c, tmp_path / "m.gguf", source=tmp_path / "src")
    assert (tmp_path / "m.gguf").stat().st_size > 0


@pytest.mark.parametrize("extra, refused", [
    ("linearize-attention{window=4}", r"runs linearize-attention \(linear attention with trained feature maps\)"),
    ("sparsify-attention{window=4}", r"runs sparsify-attention or linearize-attention\{window\} \(a sliding-window"),
    ("sparsify-attention{kind=block_sparse,block=4,local=2,globals=1}",
     r"runs sparsify-attention\{kind=block_sparse\} \(a block-sparse attention mask"),
    ("insert-draft-heads{num_heads=2}", None)])
def test_attention_no_format_can_express_is_refused_and_draft_heads_are_left_out_loudly(tiny_source, tmp_path,
                                                                                       extra, refused):
    """A linearized, windowed or block-sparse artifact exported as plain weights would run the source's full
    softmax attention in llama.cpp / transformers: a different model, refused by name in every format (block
    sparsity only changes the attention mask: the pass's mask is refused by name). Draft heads are extra outputs
    no format holds: the base model is written, with a warning."""
    import warnings
    import slimgraph
    from slimgraph.export import export
    model, _, d = tiny_source
    compiled = slimgraph.optimize(model, pipeline=f"canonicalize,quantize-weights{{{SYM}}},fuse-dequant-matmul,{extra}")
    for fmt in ("gguf", "compressed-tensors", "gptq"):
        out = tmp_path / fmt
        if refused:
            with pytest.raises(ExportError, match=refused + r".*a different model from this artifact.*without that "
                                                            r"pass"):
                export(compiled, out, format=fmt, source=d)
            assert not out.exists()
        else:
            with pytest.warns(UserWarning, match=r"draft heads \(insert-draft-heads\) are not written: the exported "
                                                  r"files hold the base model only"):
                export(compiled, out, format=fmt, source=d)
            assert out.exists()
