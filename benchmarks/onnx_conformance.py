"""ONNX backend node-test conformance: import each case, run it with the reference interpreter,
compare with the expected outputs.

    python benchmarks/onnx_conformance.py [--filter SUBSTR] [--failures] [--markdown]

Cases come from `onnx/backend/test/data/node/*/` (model.onnx + test_data_set_*/*.pb) when the
installed onnx ships them; otherwise they are generated in memory from the same generators
(`onnx.backend.test.case.node.collect_testcases`), which is how recent onnx wheels ship them.
A case is *supported* when every op it uses is in the importer's supported-op list, its opset
is >= 7 (older opsets are up-converted by the importer), all its inputs/outputs have IR dtypes, and the importer does not reject a feature it
uses (`UnsupportedOnnxFeature`: an attribute value such as 3-d or ceil_mode pooling, an optional
output, a parameter computed from run-time data) with its clear error. Every supported case must
pass: there is no list of tolerated failures.
"""
from __future__ import annotations
import argparse
import glob
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

@dataclass
class Case:
    name: str
    model: object
    data_sets: list  # [(inputs: list[np.ndarray], outputs: list[np.ndarray])]
    rtol: float = 1e-3
    atol: float = 1e-7


@dataclass
class Outcome:
    name: str
    ops: tuple
    supported: bool
    passed: bool
    error: str = ""
    unsupported_feature: str = ""  # the importer's UnsupportedOnnxFeature message, if it rejected one
    ops_declared: bool = False  # the op-level declaration holds (ops, opset, dtypes)
    seconds: float = 0.0
    stage: str = field(default="")
    specialized: bool = False  # passed only with data-dependent parameters bound to constants
    roundtrip: bool | None = None  # exported back to ONNX, ONNX Runtime also matches (when checked)


def load_cases(name_filter: str = "") -> list[Case]:
    import onnx
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    if os.path.isdir(root):
        return [c for c in _cases_from_files(root) if name_filter in c.name]
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [Case(c.name, c.model, [(_arrays(i), _arrays(o)) for i, o in c.data_sets], c.rtol, c.atol)
            for c in cases if name_filter in c.name]


def _arrays(xs):
    from onnx import TensorProto, numpy_helper
    return [numpy_helper.to_array(x) if isinstance(x, TensorProto) else x for x in xs]


def to_torch(x):
    """numpy -> torch, including ml_dtypes bfloat16 (reinterpreted through int16)."""
    import torch
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def to_numpy(t):
    import torch
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _cases_from_files(root):
    import onnx
    from onnx import numpy_helper
    for d in sorted(glob.glob(os.path.join(root, "*"))):
        model = onnx.load(os.path.join(d, "model.onnx"))
        sets = []
        for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
            def read(prefix):
                out = []
                for f in sorted(glob.glob(os.path.join(ds, f"{prefix}_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3])):
                    t = onnx.TensorProto()
                    with open(f, "rb") as fh:
                        t.ParseFromString(fh.read())
                    out.append(numpy_helper.to_array(t))
                return out
            sets.append((read("input"), read("output")))
        yield Case(os.path.basename(d), model, sets)


def case_ops(model) -> tuple:
    return tuple(sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                         for n in model.graph.node}))


def is_supported(case: Case) -> bool:
    """The op-level part of the declaration (ops, opset, dtypes); `run_case` adds the
    per-feature part (an `UnsupportedOnnxFeature` raised at import)."""
    from slimgraph.frontends.onnx_import import MIN_SOURCE_OPSET, ONNX_DTYPES, supported_ops
    ops = set(supported_ops())
    opset = max((i.version for i in case.model.opset_import if i.domain in ("", "ai.onnx")), default=0)
    io = list(case.model.graph.input) + list(case.model.graph.output)
    return (opset >= MIN_SOURCE_OPSET and all(o in ops for o in case_ops(case.model))
            and all(v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in ONNX_DTYPES for v in io))


def import_specialized(case: Case):
    """Import; when a parameter (axes, pads, ...) is a graph input or computed from graph inputs,
    bind those inputs to the test's values (as exporters emit such parameters as initializers) and
    retry. Returns (graph, bound names)."""
    from slimgraph.frontends.onnx_import import NeedsConstantError, import_onnx
    names = [vi.name for vi in case.model.graph.input]
    bind: dict = {}
    while True:
        try:
            return import_onnx(case.model, bind=bind, notes=[]), set(bind)
        except NeedsConstantError as e:
            new = [n for n in _input_ancestors(case.model, e.name, names) if n not in bind]
            if not new:
                raise
            for name in new:
                values = [np.asarray(ins[names.index(name)]) for ins, _ in case.data_sets]
                if values[0].dtype.kind not in "iu" and values[0].size > 8:  # data, not a parameter
                    raise
                if any(not np.array_equal(v, values[0]) for v in values):
                    raise
                bind[name] = values[0]


def _input_ancestors(model, name: str, inputs: list[str]) -> list[str]:
    """The graph inputs a value is computed from (itself when it is one), walking node inputs back
    (also through the nodes of If/Loop bodies' outer-scope references, which the walk does not see)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen, stack, found = set(), [name], []
    while stack:
        v = stack.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in inputs:
            found.append(v)
        elif v in producer:
            stack.extend(producer[v].input)
    return [n for n in inputs if n in found]


def run_case(case: Case) -> Outcome:
    from slimgraph.frontends.onnx_import import UnsupportedOnnxFeature
    from slimgraph.ir import run
    t0 = time.perf_counter()
    out = Outcome(case.name, case_ops(case.model), is_supported(case), False)
    out.ops_declared = out.supported
    stage = "import"
    try:
        graph, bound = import_specialized(case)
        out.specialized = bool(bound)
        stage = "run"
        for inputs, expected in case.data_sets:
            tensors = [to_torch(x) for x, vi in zip(inputs, case.model.graph.input) if vi.name not in bound]
            with np.errstate(all="ignore"):
                got = run(graph, *tensors)
            stage = "compare"
            if len(got) != len(expected):
                raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
            for i, (g, e) in enumerate(zip(got, expected)):
                e = np.asarray(e)
                g, e = to_numpy(g), (e.astype(np.float32) if e.dtype.name == "bfloat16" else e)
                if g.shape != e.shape:
                    raise AssertionError(f"output {i}: shape {g.shape}, expected {e.shape}")
                if g.dtype != e.dtype:
                    raise AssertionError(f"output {i}: dtype {g.dtype}, expected {e.dtype}")
                np.testing.assert_allclose(g.astype(np.float64) if g.dtype != bool else g,
                                           e.astype(np.float64) if e.dtype != bool else e,
                                           rtol=case.rtol, atol=case.atol, equal_nan=True)
        out.passed = True
    except UnsupportedOnnxFeature as e:  # declared unsupported by the importer, not a failure
        out.supported, out.unsupported_feature = False, str(e).splitlines()[0]
        out.stage, out.error = stage, f"{type(e).__name__}: {out.unsupported_feature}"[:300]
    except Exception as e:  # noqa: BLE001 - a failing case is data for the report
        out.stage, out.error = stage, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    out.seconds = time.perf_counter() - t0
    return out


def run_all(name_filter: str = "", roundtrip: bool = False) -> list[Outcome]:
    outcomes = []
    for c in load_cases(name_filter):
        o = run_case(c)
        if roundtrip and o.passed:
            o.roundtrip = roundtrip_case(c)
        outcomes.append(o)
    return outcomes


def roundtrip_case(case: Case) -> bool:
    """Import -> export -> ONNX Runtime still matches the expected outputs."""
    from slimgraph.codegen.onnx_runtime import build_ort_runner
    try:
        graph, bound = import_specialized(case)
        runner = build_ort_runner(graph, ["CPUExecutionProvider"])
        for inputs, expected in case.data_sets:
            got = runner(*[to_torch(x) for x, vi in zip(inputs, case.model.graph.input) if vi.name not in bound])
            for g, e in zip(got, expected, strict=True):
                g, e = to_numpy(g), np.asarray(e)
                as_f = (lambda a: a if a.dtype == bool else a.astype(np.float64))  # noqa: E731
                np.testing.assert_allclose(as_f(g), as_f(e.astype(np.float32) if e.dtype.name == "bfloat16" else e),
                                           rtol=case.rtol, atol=case.atol, equal_nan=True)
        return True
    except Exception:  # noqa: BLE001 - counted, not raised
        return False


def per_op(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        for op in o.ops:
            table[op][0] += o.passed
            table[op][1] += 1
    return {k: tuple(v) for k, v in sorted(table.items())}


def rejected_features(outcomes: list[Outcome]) -> dict[str, int]:
    """Importer rejection message (without the node name) -> number of cases."""
    import re
    table: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if o.unsupported_feature and o.ops_declared:
            why = re.sub(r"^node '[^']*' \(([^)]*)\): ", r"\1: ", o.unsupported_feature)
            why = re.sub(r"\(input (\d+), '[^']*'\)", r"(input \1)", why).split(" (bind a graph input")[0]
            table[why.replace("|", "/")] += 1
    return dict(sorted(table.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(outcomes: list[Outcome]) -> str:
    n, p = len(outcomes), sum(o.passed for o in outcomes)
    sup = [o for o in outcomes if o.supported]
    sp = sum(o.passed for o in sup)
    spec = sum(o.passed and o.specialized for o in outcomes)
    rej = sum(bool(o.unsupported_feature) and o.ops_declared for o in outcomes)
    return (f"all cases: {p}/{n} pass ({100 * p / max(n, 1):.1f}%; {spec} of them with parameter inputs bound "
            f"as constants; without binding: {p - spec}/{n} = {100 * (p - spec) / max(n, 1):.1f}%); supported cases: {sp}/{len(sup)} pass ({100 * sp / max(len(sup), 1):.1f}%; "
            f"{rej} further cases of supported ops use a feature the importer rejects)")


def markdown(outcomes: list[Outcome]) -> str:
    """The generated docs page: summary, supported-op list (from the importer's registry), per-op table."""
    import onnx
    import onnxruntime
    from slimgraph.frontends.onnx_import import supported_ops
    checked = [o for o in outcomes if o.roundtrip is not None]
    rt = (f"Round trip (import -> export -> ONNX Runtime {onnxruntime.__version__}) of the passing cases: "
          f"{sum(o.roundtrip for o in checked)}/{len(checked)} match." if checked else "")
    ops = supported_ops()
    lines = ["# ONNX backend node-test conformance", "", "Generated by `python benchmarks/onnx_conformance.py "
             "--roundtrip --write benchmarks/onnx_conformance.md`.", "", summary(outcomes), "", rt, "",
             f"onnx {onnx.__version__}, {len(outcomes)} node cases.", "",
             f"## Supported ONNX ops ({len(ops)})", "", ", ".join(ops), "",
             "## Features of supported ops that the importer rejects", "",
             "Cases whose ops are all supported but which use a feature the importer rejects at import "
             "with `UnsupportedOnnxFeature` (counted as unsupported, not as supported failures):", "",
             "| feature (importer's error, node name elided) | cases |", "|---|---|"]
    lines += [f"| {why} | {n} |" for why, n in rejected_features(outcomes).items()]
    lines += ["", "## Per op", "", "| op | pass / cases |", "|---|---|"]
    lines += [f"| {op} | {p}/{n} |" for op, (p, n) in per_op(outcomes).items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="")
    ap.add_argument("--failures", action="store_true", help="list every failing case with its error")
    ap.add_argument("--markdown", action="store_true", help="print the per-op table as markdown")
    ap.add_argument("--roundtrip", action="store_true", help="also export passing cases and run them in ORT")
    ap.add_argument("--write", metavar="PATH", help="write the markdown report (docs page) to PATH")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    outcomes = run_all(args.filter, roundtrip=args.roundtrip)
    if args.write:
        with open(args.write, "w") as f:
            f.write(markdown(outcomes))
    if args.failures:
        for o in outcomes:
            if not o.passed:
                print(f"{'SUPPORTED ' if o.supported else ''}FAIL {o.name} [{o.stage}] {o.error}")
    if args.markdown:
        print(markdown(outcomes))
    else:
        for op, (p, n) in per_op(outcomes).items():
            print(f"{op:32s} {p:4d}/{n:<4d}")
    checked = [o for o in outcomes if o.roundtrip is not None]
    if checked:
        print(f"round trip through ONNX Runtime: {sum(o.roundtrip for o in checked)}/{len(checked)} passing cases")
    print(summary(outcomes), f"in {time.perf_counter() - t0:.1f}s")
    return outcomes


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
