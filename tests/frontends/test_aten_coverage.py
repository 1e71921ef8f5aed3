"""Core ATen coverage: one small module per op family through the torch.export frontend vs eager.
Ops without a rule are decomposed by torch first (frontends/aten_decomp.py); in-place ops are
functionalized away. benchmarks/aten_coverage.py writes the per-op table."""
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from slimgraph import ir
from slimgraph.frontends.torch_export import import_module

F = nn.functional


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _setitem(x):
    x = x.clone()
    x[:, 0] = 1.0                    # select_scatter
    x[1:3, 2:4] = -x[1:3, 2:4]       # slice_scatter
    x[torch.tensor([0, 2])] += 5.0   # index_put (accumulate after functionalization)
    x.masked_fill_(x > 2, 2.0)
    return x


def _inplace(x):
    y = x.clone()
    y.add_(1).mul_(2)
    y.relu_()
    return F.relu(x * 3, inplace=True) - y, y.scatter_(1, torch.tensor([[0, 1]] * 4), -1.0)


FAMILIES = {
    "inplace": _inplace,
    "setitem": _setitem,
    "item_as_scalar": lambda x: (x * x.sum().item() + x.amax().item(), x - (x[0] > 0).sum().item()),
    "min_max_other": lambda x: (torch.min(x, x.flip(0)), torch.max(x, 0.5 * x), torch.fmin(x, x.flip(1)),
                                torch.fmax(x, x.flip(1))),
    "unary_math": lambda x: (torch.asin(x.tanh()), torch.acos(x.tanh()), torch.sinh(x), torch.cosh(x),
                             torch.asinh(x), torch.acosh(x.abs() + 1), torch.atanh(x.tanh() * 0.9),
                             torch.trunc(x * 3), torch.log2(x.abs() + 0.1), torch.log10(x.abs() + 0.1),
                             torch.atan2(x, x.flip(0)), torch.isinf(x / 0.0), F.selu(x)),
    "any_all": lambda x: ((x > 0).any(1), (x > -3).all(), x.any(0, keepdim=True), (x > 0).all(1)),
    "sort_topk": lambda x: (*x.topk(3, dim=1), *x.sort(0, descending=True), *x.sort(1)),
    "distances": lambda x: (torch.cdist(x, x.flip(0)), torch.cdist(x, x * 2, p=1), F.pdist(x),
                            torch.diagonal(x), torch.diagonal(x, 1), x.diag_embed().sum(-1)),
    "scatter": lambda x: (torch.zeros(4, 6).scatter(1, torch.tensor([[0, 2]] * 4), x[:, :2]),
                          torch.ones(4, 6).scatter_add(0, torch.tensor([[1, 0, 3, 2, 1, 0]]), x[:1]),
                          x.scatter_reduce(1, torch.tensor([[0, 0, 1, 1, 2, 2]] * 4), x, "amax"),
                          x.masked_scatter(x > 0, x.flip(0) * 10)),
    "resample": lambda x: (F.interpolate(x[None, None], scale_factor=2, mode="nearest"),
                           F.interpolate(x[None, None], size=(6, 9), mode="bilinear", align_corners=False),
                           F.pad(x[None], (2, 1), mode="reflect"), F.pad(x[None, None], (1, 1, 2, 0),
                                                                           mode="replicate")),
    "norm_pool": lambda x: (F.group_norm(x.view(2, 4, 3), 2, torch.arange(4.0), torch.ones(4)),
                            F.avg_pool3d(x.view(1, 1, 2, 3, 4), 2, stride=1, padding=1, count_include_pad=False),
                            F.max_pool3d(x.view(1, 2, 2, 2, 3), (2, 2, 1), stride=1, padding=(1, 0, 0)),
                            F.adaptive_avg_pool3d(x.view(1, 1, 2, 3, 4), (1, 2, 2))),
    # torch's repeat with more repeats than dims (new leading dims), var_mean / std_mean (InstanceNorm), adaptive
    # max pooling to sizes that do not divide (torch's decomposition refuses them), transposed convolutions 1-d
    # and 2-d (strided, padded, grouped, dilated)
    "repeat_norms": lambda x: (x.repeat(3, 1, 2), x.repeat(2, 2), *torch.var_mean(x, 1),
                               *torch.std_mean(x, dim=0, correction=0, keepdim=True),
                               F.instance_norm(x.view(1, 4, 2, 3)), F.adaptive_max_pool2d(x[None], (3, 4)),
                               F.adaptive_max_pool1d(x, 4)),
    # ceil_mode and dilated pools (GoogLeNet / SqueezeNet style), 1-d to 3-d: the IR's pool_nd
    "pools_ceil_dilation": lambda x: (F.max_pool2d(x.view(1, 1, 4, 6), 3, 2, 1, ceil_mode=True),
                                      F.max_pool2d(x.view(1, 1, 4, 6), 2, 1, 0, dilation=2),
                                      F.avg_pool2d(x.view(1, 1, 4, 6), 3, 2, 1, ceil_mode=True),
                                      F.avg_pool2d(x.view(1, 1, 4, 6), 2, 3, 0, ceil_mode=True, count_include_pad=False),
                                      F.max_pool1d(x[None], 3, 2, ceil_mode=True),
                                      F.max_pool3d(x.view(1, 1, 2, 3, 4), 2, 2, ceil_mode=True),
                                      F.avg_pool3d(x.view(1, 1, 2, 3, 4), 2, 2, 1, ceil_mode=True)),
    "bucketize": lambda x: (torch.bucketize(x, torch.tensor([-1.0, 0.0, 0.0, 1.0])),
                            torch.bucketize(x.masked_fill(x > 1, float("nan")), torch.tensor([-0.5, 0.5]), right=True,
                                            out_int32=True),
                            torch.searchsorted(torch.tensor([-0.5, 0.5]), x, side="right")),
    "conv_transpose": lambda x: (
        F.conv_transpose1d(x[None], torch.linspace(-1, 1, 36).view(4, 3, 3), stride=2, padding=1,
                           output_padding=1, dilation=2),
        F.conv_transpose2d(x.view(1, 4, 2, 3), torch.linspace(-1, 1, 24).view(4, 1, 3, 2), torch.ones(2), stride=2,
                           padding=1, output_padding=1, groups=2)),
    "embedding_bag": lambda x: (F.embedding_bag(torch.tensor([[0, 2], [1, 3]]), x, mode="sum"),
                                F.embedding_bag(torch.tensor([0, 2, 1, 3, 3]), x, torch.tensor([0, 2]),
                                                mode="mean"),
                                F.grid_sample(x[None, None], x.reshape(1, 2, 6, 2).tanh(),
                                              align_corners=False)),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_matches_eager(name):
    torch.manual_seed(0)
    m = Fn(FAMILIES[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = import_module(m, (torch.randn(4, 6),))
    g = imp.graph
    ir.verify(g)
    assert not any(n.op.endswith("_") for n in g.nodes)
    x = torch.randn(4, 6)
    with torch.no_grad():
        want = torch.utils._pytree.tree_leaves(m(x.clone()))
    got = torch.utils._pytree.tree_leaves(imp.unflatten_outputs(ir.run(g, *imp.flatten_inputs(x))))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_decomposition_only_for_ops_without_a_rule():
    """A graph whose ops all have rules is not decomposed (linear stays linear, not addmm);
    one in-place op decomposes only that op: the linear is still there."""
    lin = nn.Linear(6, 3)
    imp = import_module(Fn(lambda x: lin(x)), (torch.randn(4, 6),))
    assert imp.decomposed == [] and imp.graph.op_counts().get("linear") == 1
    imp = import_module(Fn(lambda x: lin(x).relu_()), (torch.randn(4, 6),))
    assert imp.decomposed == ["aten.relu_.default"]
    assert imp.graph.op_counts().get("linear") == 1 and imp.graph.op_counts().get("relu") == 1


def test_input_mutation_is_warned_and_outputs_still_match():
    def mutate(x):
        x.mul_(2)
        return x + 1
    with pytest.warns(UserWarning, match="mutates user_input_mutation x"):
        imp = import_module(Fn(mutate), (torch.randn(3),))
    x = torch.randn(3)
    assert torch.equal(ir.run(imp.graph, x.clone())[0], x * 2 + 1)


def test_coverage_table_at_least_95_percent_and_every_gap_has_a_reason():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "aten_coverage.py"
    spec = importlib.util.spec_from_file_location("aten_coverage", path)
    cov = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cov)
    table = torch.export.default_decompositions()
    rows = [(str(op), *cov.classify(op, table)) for op in cov.core_ops()]
    handled = sum(1 for _, kind, _ in rows if kind != "unsupported")
    assert len(rows) > 150 and handled / len(rows) >= 0.95
    gaps = [(n, why) for n, kind, why in rows if kind == "unsupported"]
    assert all(why != cov.REASONS["other"] for _, why in gaps), gaps


@pytest.mark.parametrize("target", ["torch", "onnx"])
def test_scatter_family_runs_on_targets(target):
    """scatter (none/sum/amax) lowers to the torch target and to ONNX ScatterElements."""
    if target == "onnx":
        pytest.importorskip("onnxruntime")
    import slimgraph
    m = Fn(lambda x: FAMILIES["scatter"](x)[:3])
    x = torch.randn(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = slimgraph.optimize(m, (x,), target=target)
    for a, b in zip(fast(x), m(x)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
