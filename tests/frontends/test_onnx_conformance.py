"""ONNX backend node tests: every case whose ops the importer declares supported must pass,
except the documented KNOWN_FAILURES, each of which must still fail (so the list stays honest)."""
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
    bad = [f"{o.name} [{o.stage}] {o.error}" for o in outcomes
           if o.supported and not o.passed and not conf.known_failure(o.name)]
    assert not bad, f"{len(bad)} supported cases fail:\n" + "\n".join(bad[:30])


@pytest.mark.slow
def test_known_failures_are_still_failing(outcomes):
    by_pattern = {p: [o for o in outcomes if conf.known_failure(o.name) == why]
                  for p, why in conf.KNOWN_FAILURES.items()}
    stale = [p for p, cases in by_pattern.items() if not cases or all(o.passed for o in cases)]
    assert not stale, f"KNOWN_FAILURES entries that match no failing case (remove them): {stale}"


@pytest.mark.slow
def test_overall_pass_rate_does_not_regress(outcomes):
    rate = sum(o.passed for o in outcomes) / len(outcomes)
    assert len(outcomes) > 1000 and rate >= 0.60, conf.summary(outcomes)
