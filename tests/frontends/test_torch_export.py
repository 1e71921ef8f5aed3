"""torch.export frontend: every imported graph verifies, round-trips through the text form, and
matches eager PyTorch through the reference interpreter (fp32, max abs error <= 1e-5)."""
import pytest
import torch
from torch import nn
from torch.export import Dim

from slimgraph import ir
from slimgraph.frontends.torch_export import ConversionError, UnsupportedOpError, import_module

TOL = 1e-5


def check_graph(imp):
    g = imp.graph
    ir.verify(g)
    text = str(g)
    assert str(ir.parse_graph(text, {k: w.tensor for k, w in g.weights.items()})) == text
    return g


def run(imp, *args, **kwargs):
    return imp.unflatten_outputs(ir.run(imp.graph, *imp.flatten_inputs(*args, **kwargs)))


def max_err(a, b):
    return (a - b).abs().max().item()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop(torch.relu(self.fc1(x)))
        x = nn.functional.gelu(self.fc2(x), approximate="tanh") * 0.5 + 1
        return torch.softmax(self.fc3(x), dim=-1), x.sum(-1)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 16, 3, stride=2), nn.Linear(16 * 3 * 3, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def test_mlp_dynamic_batch_and_output_structure():
    torch.manual_seed(0)
    m = MLP().eval()
    imp = import_module(m, (torch.randn(3, 16),), dynamic_shapes=({0: Dim("batch")},))
    g = check_graph(imp)
    assert str(g.inputs[0].type) == "f32[batch,16]"
    assert "dropout" not in str(g) and g.op_counts()["linear"] == 3
    for n in (3, 7):
        x = torch.randn(n, 16)
        probs, total = run(imp, x)
        ref = m(x)
        assert max_err(probs, ref[0]) <= TOL and max_err(total, ref[1]) <= TOL


def test_cnn_conv_bn_pool_flatten():
    torch.manual_seed(0)
    m = CNN().eval()
    m.bn.running_mean.normal_()
    m.bn.running_var.uniform_(0.5, 2.0)
    imp = import_module(m, (torch.randn(2, 3, 28, 28),), dynamic_shapes=({0: Dim("batch")},))
    g = check_graph(imp)
    ops = g.op_counts()
    for op in ("conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "reshape", "linear"):
        assert op in ops, op
    for n in (2, 5):
        x = torch.randn(n, 3, 28, 28)
        assert max_err(run(imp, x), m(x)) <= TOL


def test_weights_are_shared_and_tied_weights_appear_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight
            self.register_buffer("scale", torch.tensor(2.0))

        def forward(self, ids):
            return self.head(self.emb(ids) * self.scale)

    m = Tied().eval()
    g = check_graph(import_module(m, (torch.tensor([[1, 2, 3]]),)))
    tied = [w for w in g.weights.values() if w.tensor.data_ptr() == m.emb.weight.data_ptr()]
    assert len(tied) == 1 and len(tied[0].uses) == 2
    assert "scale" in g.weights and g.weights["scale"].tensor.data_ptr() == m.scale.data_ptr()


def test_scalars_become_typed_constants_and_promotion_matches_torch():
    class Scalars(nn.Module):
        def forward(self, x, i, b):
            return x * 2 + 0.5, i + 3, i * 1.5, (b + 1), x.pow(2), 1.0 - x, i // 2

    imp = import_module(Scalars(), (torch.randn(4), torch.arange(4, dtype=torch.int32),
                                    torch.tensor([True, False, True, True])))
    g = check_graph(imp)
    consts = {(n.attrs["value"], n.attrs["dtype"]) for n in g.nodes if n.op == "constant"}
    assert {(2, "i64"), (0.5, "f32"), (3, "i64"), (1.5, "f32")} <= consts
    x, i, b = torch.randn(4), torch.arange(4, dtype=torch.int32), torch.tensor([True, False, False, True])
    for got, want in zip(run(imp, x, i, b), Scalars()(x, i, b)):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_baddbmm_with_beta_zero_ignores_its_input_as_torch_does():
    """torch.baddbmm(input, a, b, beta=0) ignores input, NaN and inf included (GPT-2's reorder_and_upcast_attn
    passes an uninitialized torch.empty): not 0 * input, which is NaN where input is."""
    class Scores(nn.Module):
        def forward(self, x, a, b):
            return torch.baddbmm(x, a, b, beta=0, alpha=0.5), torch.baddbmm(x, a, b, beta=2.0)

    x = torch.full((2, 3, 5), float("nan"))
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    imp = import_module(Scores(), (x, a, b))
    got, want = run(imp, x, a, b), Scores()(x, a, b)
    torch.testing.assert_close(got[0], want[0])
    assert not got[0].isnan().any() and got[1].isnan().all()


def test_symbolic_arithmetic_on_sizes():
    class Sizes(nn.Module):
        def forward(self, x, y):
            z = torch.cat([x, y], dim=1)
            pos = torch.arange(x.shape[1], x.shape[1] + y.shape[1])
            return z.view(z.shape[0], -1, 2), pos + x.shape[1], z.new_ones(z.shape[1]).cumsum(0)

    a, b = Dim("a"), Dim("b")
    imp = import_module(Sizes(), (torch.randn(2, 6), torch.randn(2, 4)), dynamic_shapes=({1: a}, {1: b}))
    g = check_graph(imp)
    assert str(g.inputs[0].type) == "f32[2,a]" and str(g.outputs[1].type) == "i64[b]"
    arange = next(n for n in g.nodes if n.op == "arange")
    assert (arange.attrs["start"], arange.attrs["end"]) == ("a", "a+b")  # sizes became dim expressions
    assert not any(n.op == "dim_value" and n.attrs["expr"] != "a" for n in g.nodes)
    x, y = torch.randn(2, 8), torch.randn(2, 2)
    for got, want in zip(run(imp, x, y), Sizes()(x, y)):
        assert got.shape == want.shape and torch.equal(got, want)


def test_unsupported_op_names_the_aten_op_and_source_line():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)  # no IR op for this

    with pytest.raises(UnsupportedOpError) as err:
        import_module(Odd(), (torch.randn(3),))
    msg = str(err.value)
    assert "aten.special_bessel_j0" in msg
    assert f"{__file__}:" in msg and "bessel_j0(x)" in msg
    assert "aten.linear.default" in msg  # the supported set is listed


def test_training_mode_dropout_is_refused():
    m = MLP().train()
    with pytest.raises(ConversionError, match="model.eval"):
        import_module(m, (torch.randn(3, 16),))


# ---- transformers models (tiny random configs) ---------------------------------------------------
def _tiny(name):
    import transformers as tf
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4)
    if name == "bert":
        return tf.BertModel(tf.BertConfig(**common, max_position_embeddings=64)).eval()
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                                bos_token_id=0, eos_token_id=0)).eval()
    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
           "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[name]
    return cls[1](cls[0](**common, num_key_value_heads=2)).eval()


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gpt2"])
def test_causal_lm_without_cache(name):
    pytest.importorskip("transformers")
    m = _tiny(name)
    ids = torch.randint(0, 128, (2, 7))
    imp = import_module(m, (ids,), {"use_cache": False},
                        dynamic_shapes={"input_ids": {0: Dim("batch"), 1: Dim("seq", max=64)},
                                        "use_cache": None})
    g = check_graph(imp)
    assert imp.input_names == ["input_ids"] and imp.output_names == ["logits"]
    assert str(g.inputs[0].type) == "i64[batch,seq]"
    assert "attention" in g.op_counts()
    for shape in [(2, 7), (3, 12)]:
        ids = torch.randint(0, 128, shape)
        out = run(imp, ids, use_cache=False)
        assert type(out).__name__.startswith("CausalLMOutputWith")  # the model's own output class
        assert max_err(out.logits, m(ids, use_cache=False).logits) <= TOL
    with pytest.raises(ValueError, match="baked in"):
        imp.flatten_inputs(ids, use_cache=True)


def _bert_inputs(shape):
    ids = torch.randint(0, 128, shape)
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, -2:] = 0  # padding exercises the attention mask
    return ids, mask


def test_bert_with_padding_mask():
    pytest.importorskip("transformers")
    m = _tiny("bert")
    ids, mask = _bert_inputs((2, 7))
    b, s = Dim("batch"), Dim("seq", max=64)
    imp = import_module(m, (), {"input_ids": ids, "attention_mask": mask},
                        dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}})
    check_graph(imp)
    assert imp.output_names == ["last_hidden_state", "pooler_output"]
    for shape in [(2, 7), (3, 11)]:
        ids, mask = _bert_inputs(shape)
        out, ref = run(imp, input_ids=ids, attention_mask=mask), m(input_ids=ids, attention_mask=mask)
        assert max_err(out.last_hidden_state, ref.last_hidden_state) <= TOL
        assert max_err(out.pooler_output, ref.pooler_output) <= TOL


@pytest.mark.real_model
def test_real_minilm_on_tokenized_text(minilm):
    model, tok = minilm
    batch = tok(["slimgraph compiles neural networks.", "A short one."], padding=True, return_tensors="pt")
    b, s = Dim("batch"), Dim("seq", max=512)
    imp = import_module(model, (), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
                        dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}})
    g = check_graph(imp)
    assert g.op_counts()["attention"] == 6
    texts = ["Different lengths work too, because seq is symbolic in the graph.", "Yes.", "A third sentence."]
    for t in (batch, tok(texts, padding=True, return_tensors="pt")):
        kw = {"input_ids": t.input_ids, "attention_mask": t.attention_mask}
        with torch.no_grad():
            ref = model(**kw)
        assert max_err(run(imp, **kw).last_hidden_state, ref.last_hidden_state) <= TOL


def test_grad_mode_and_disabled_autocast_regions_are_inlined():
    class Regions(nn.Module):
        def forward(self, x):
            y = x + 1
            with torch.autocast("cpu", enabled=False):
                z = y.float() * 2
            with torch.enable_grad():
                w = z.sin()
            return w

    imp = import_module(Regions(), (torch.randn(3, 4),))
    g = check_graph(imp)
    assert [n.op for n in g.nodes if n.op != "constant"] == ["add", "mul", "sin"]
    x = torch.randn(3, 4)
    assert torch.equal(run(imp, x), Regions()(x))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


_F = nn.functional
OP_CASES = {
    "masked_fill_where": lambda x: torch.where(x > 0, x, 0.0).masked_fill(x < -1, float("-inf")),
    "index_and_gather": lambda x: (x[torch.tensor([2, 0])], x[:, torch.tensor([[1, 3]])],
                                   torch.gather(x, 1, torch.tensor([[0, 1], [1, 2], [2, 3], [0, 0]]))),
    "stack_split_chunk_unbind": lambda x: (torch.stack([x, x * 2], 1), *x.split([1, 5], 1), *x.chunk(2, 0),
                                          *x.unbind(0)),
    "narrow_select_flip_tri": lambda x: (x.narrow(1, 1, 2), x[1], x.flip(0), x.tril(-1), x.triu(1)),
    "reductions": lambda x: (x.amax(1), x.max(1), x.min(0).values, x.var(1), x.std(0, keepdim=True),
                             x.argmax(1), x.mean(), x.sum(0, dtype=torch.float64), x.cumsum(1)),
    "norms_and_activations": lambda x: (_F.layer_norm(x, (6,)), _F.log_softmax(x, 1), _F.hardtanh(x),
                                        _F.relu6(x), _F.leaky_relu(x, 0.2), x.clamp(min=-0.5), _F.elu(x),
                                        _F.silu(x), _F.gelu(x), torch.erf(x), x.sigmoid()),
    # var_mean/std_mean (nn.InstanceNorm), cumprod (an IR op without an ATen rule before), histc (MoE routers)
    "var_mean_cumprod_histc": lambda x: (*torch.var_mean(x, 1), *torch.std_mean(x, 0, correction=0, keepdim=True),
                                         x.cumprod(1), (x > 0).cumprod(0), torch.histc(x, bins=5, min=-1, max=1)),
    # transposed convolutions (nn.ConvTranspose1d/2d: DPT, U-Nets), grouped, strided, dilated, output_padding
    "conv_transpose": lambda x: (_F.conv_transpose2d(x.reshape(1, 4, 2, 3), torch.ones(4, 3, 3, 2) / 7, torch.ones(6),
                                                     stride=2, padding=1, output_padding=1, groups=2),
                                 _F.conv_transpose2d(x.reshape(1, 4, 2, 3), torch.ones(4, 2, 2, 3) / 5, stride=(2, 1),
                                                     dilation=(1, 2)),
                                 _F.conv_transpose1d(x.reshape(1, 4, 6), torch.ones(4, 5, 4) / 3, stride=3, padding=1)),
    "constructors": lambda x: (x.new_zeros(2, 3), torch.full_like(x, 7),
                               torch.ones_like(x, dtype=torch.int32), torch.arange(1, 9, 3),
                               x + torch.arange(6)),
    "reshapes_and_pads": lambda x: (x.t(), x.reshape(3, 8).transpose(0, 1), x.unflatten(1, (2, 3)),
                                    x.unsqueeze(0).expand(2, 4, 6), x.repeat(2, 1), _F.pad(x, (1, 2)),
                                    x.view(-1), x[:, None, 1:5:2]),
    "matmuls": lambda x: (x @ x.t(), torch.bmm(x.view(2, 2, 6), x.view(2, 6, 2)),
                          torch.addmm(torch.ones(6), x, torch.ones(6, 6).tril())),
    "int_math": lambda x: ((x * 10).long() // 3, (x * 10).long() % 4, (x > 0) & (x < 1), ~(x > 0),
                           torch.div((x * 10).long(), 3, rounding_mode="floor")),
    # is_causal with 3 queries over 5 keys: torch aligns the diagonal top-left, the IR bottom-right
    "sdpa_causal_and_gqa": lambda x: _F.scaled_dot_product_attention(
        x.view(1, 4, 1, 6).expand(1, 4, 3, 6) * torch.arange(3.0).view(3, 1),
        x.view(1, 4, 1, 6)[:, :2].expand(1, 2, 5, 6),
        x.view(1, 4, 1, 6)[:, :2].expand(1, 2, 5, 6) * torch.arange(5.0).view(5, 1), is_causal=True,
        enable_gqa=True),
}


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_aten_rules_match_eager(name):
    torch.manual_seed(0)
    m = Fn(OP_CASES[name])
    imp = import_module(m, (torch.randn(4, 6),))
    check_graph(imp)
    x = torch.randn(4, 6)
    got, want = torch.utils._pytree.tree_leaves(run(imp, x)), torch.utils._pytree.tree_leaves(m(x))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, atol=TOL, rtol=0, equal_nan=True)


def test_nodes_record_the_source_line_they_came_from():
    imp = import_module(MLP().eval(), (torch.randn(3, 16),))
    softmax = next(n for n in imp.graph.nodes if n.op == "softmax")
    assert "test_torch_export.py" in softmax.meta["source"] and "torch.softmax" in softmax.meta["source"]


def test_a_model_torch_export_cannot_trace_gets_an_error_naming_it_and_a_way_out():
    """Before: torch's own error (a data-dependent guard here) with no word of which model or what to do."""
    import slimgraph
    from slimgraph.frontends.torch_export import TraceError

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1     # Python control flow on a tensor's value

    with pytest.raises(TraceError, match=r"(?s)torch.export could not trace Branchy.*torch.where or torch.cond") as info:
        slimgraph.optimize(Branchy(), (torch.randn(3),), target="torch")
    assert info.value.__cause__ is not None and str(info.value.__cause__) in str(info.value)
