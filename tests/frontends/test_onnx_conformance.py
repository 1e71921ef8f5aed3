"""ONNX backend node tests: every case whose ops the importer declares supported must pass.

The declaration has two parts: the op list (`supported_ops()`, opset >= 13, IR dtypes) and the
per-feature rejections the importer raises as `UnsupportedOnnxFeature` (3-d pooling, Pad modes,
training mode, ...). A case the importer rejects that way counts as unsupported; any other
failure of a supported case fails this test. There is no list of tolerated failures."""
import importlib.util
import os
import sys

import pytest

pytest.importorskip("onnx", reason="needs pip install 'slimgraph[onnx]'")

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("onnx_conformance", os.path.join(_ROOT, "benchmarks", "onnx_conformance.py"))
conf = importlib.util.module_from_spec(_spec)
sys.modules["onnx_conformance"] = conf  # dataclasses resolve their module through sys.modules
_spec.loader.exec_module(conf)


@pytest.fixture(scope="module")
def outcomes():
    return conf.run_all()


@pytest.mark.slow
def test_every_supported_case_passes(outcomes):
    bad = [f"{o.name} [{o.stage}] {o.error}" for o in outcomes if o.supported and not o.passed]
    assert not bad, f"{len(bad)} supported cases fail:\n" + "\n".join(bad[:30])
    assert not hasattr(conf, "KNOWN_FAILURES")


@pytest.mark.slow
def test_rejections_are_clear_feature_errors(outcomes):
    """A rejected feature names the node and op; no supported-op case fails with a generic error."""
    rejected = [o for o in outcomes if o.unsupported_feature]
    assert rejected and all(o.unsupported_feature.startswith("node ") and not o.passed for o in rejected)
    assert all(not o.supported for o in rejected)


@pytest.mark.slow
def test_overall_pass_rate_does_not_regress(outcomes):
    rate = sum(o.passed for o in outcomes) / len(outcomes)
    assert len(outcomes) > 1000 and rate >= 0.75, conf.summary(outcomes)
    unbound = sum(o.passed and not o.specialized for o in outcomes) / len(outcomes)
    assert unbound >= 0.60, conf.summary(outcomes)  # without binding parameter inputs as constants


def test_unsupported_feature_is_not_a_supported_failure():
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])  # the Indices output
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3]),
                               helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    np = __import__("numpy")
    x = np.zeros((1, 1, 4, 4), "float32")
    o = conf.run_case(conf.Case("test_maxpool_indices_local", model,
                                [([x], [x[:, :, :3, :3], np.zeros((1, 1, 3, 3), "int64")])]))
    assert not o.supported and not o.passed and "Indices" in o.unsupported_feature
