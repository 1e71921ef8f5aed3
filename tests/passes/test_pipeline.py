"""Pipeline strings: parsing, typed option conversion, errors that list the alternatives, round trip."""
from typing import Literal, Optional

import pytest

from slimgraph.passes import (Pass, PassError, PassResult, format_pipeline, get_pass, parse_pipeline,
                              register_pass)


@register_pass("test-options")
class OptionsPass(Pass):
    bits: int = 4
    ratio: float = 0.5
    sym: bool = True
    method: Literal["rtn", "awq"] = "rtn"
    label: str = "x"
    dims: list[int] = None
    limit: Optional[int] = None

    def run(self, graph):
        return PassResult(False)


def test_parse_names_and_defaults():
    ps = parse_pipeline("canonicalize, cse ,dce")
    assert [p.name for p in ps] == ["canonicalize", "cse", "dce"]
    assert parse_pipeline("") == [] and parse_pipeline(None) == []


def test_options_are_converted_to_field_types():
    (p,) = parse_pipeline("test-options{bits=8,ratio=0.25,sym=false,method=awq,label=hi,dims=[1,-2],limit=7}")
    got = (p.bits, p.ratio, p.sym, p.method, p.label, p.dims, p.limit)
    assert got == (8, 0.25, False, "awq", "hi", [1, -2], 7)
    assert type(p.bits) is int and type(p.ratio) is float
    (p,) = parse_pipeline("test-options{limit=none,dims=[]}")
    assert p.limit is None and p.dims == []
    (p,) = parse_pipeline("select-precision{target_ppl=+5%}")     # a percentage, as the docs write it
    assert p.target_ppl == pytest.approx(0.05)
    (p,) = parse_pipeline("test-options{ratio=2.5%}")
    assert p.ratio == pytest.approx(0.025) and format_pipeline([p]) == "test-options{ratio=0.025}"


def test_list_of_specs_and_pass_objects():
    obj = get_pass("fold-constants")(max_elements=8)
    ps = parse_pipeline(["canonicalize", obj, "cse,dce"])
    assert [p.name for p in ps] == ["canonicalize", "fold-constants", "cse", "dce"] and ps[1] is obj
    with pytest.raises(PassError, match="pass specs or Pass objects"):
        parse_pipeline([42])


def test_unknown_pass_lists_valid_passes_and_suggests():
    with pytest.raises(PassError) as e:
        parse_pipeline("canonicalise,dce")
    assert "unknown pass 'canonicalise'" in str(e.value) and "Did you mean canonicalize" in str(e.value)
    assert "Valid passes:" in str(e.value) and "fold-constants" in str(e.value)


def test_unknown_option_lists_options_with_types():
    with pytest.raises(PassError) as e:
        parse_pipeline("test-options{bitz=3}")
    msg = str(e.value)
    assert "pipeline item #1 'test-options{bitz=3}'" in msg and "no option 'bitz' (did you mean 'bits'?)" in msg
    assert "write options as test-options{bits=4,ratio=0.5}" in msg
    # the options as `slimgraph passes` lists them: pipeline spellings, no Python internals
    assert "bits: int = 4" in msg and "sym: true|false = true" in msg and "method: rtn|awq = rtn" in msg
    assert "limit: int|none = none" in msg and "dims: [int,...] = none" in msg
    for python_spelling in ("Literal", "Optional", "True", "None", "_MISSING_TYPE", "<"):
        assert python_spelling not in msg


def test_unknown_option_of_a_real_pass_hides_python_only_fields():
    with pytest.raises(PassError) as e:
        parse_pipeline("canonicalize,quantize-weights{bitz=4}")
    msg = str(e.value)
    assert msg.startswith("pipeline item #2 'quantize-weights{bitz=4}'")       # counted from 1
    assert "include: [str,...] = []" in msg and "method: rtn|gptq|awq|awq-gptq = rtn" in msg
    assert "calibration" not in msg and "layer_overrides" not in msg and "_MISSING_TYPE" not in msg


def test_options_text_matches_the_passes_listing():
    from slimgraph.cli import main
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["passes"])
    listing = buf.getvalue()
    with pytest.raises(PassError) as e:
        parse_pipeline("select-precision{target=5%}")
    for line in str(e.value).splitlines()[1:]:
        assert line in listing                  # the same lines, same indent


@pytest.mark.parametrize("spec, expected", [
    ("quantize-weights{bits=3}", "pipeline item #1 'quantize-weights{bits=3}': bits=3 is not supported; use bits=4"),
    ("cse,quantize-weights{group=-8}", "pipeline item #2 'quantize-weights{group=-8}': group=-8 must be 0"),
    ("quantize-weights{damp=2.0}", "damp=2.0 must be in (0, 1)"),
    ("select-precision{high_bits=3}", "high_bits=3 is not supported; use high_bits=4"),
    ("select-precision{bits=8,high_bits=4}", "high_bits=4 is below bits=8"),
    ("select-precision{target_ppl=0}", "target_ppl=0.0 must be > 0"),
    ("cse{x=1}", "pass 'cse' takes no options"),
])
def test_unsupported_values_fail_when_the_pipeline_is_parsed(spec, expected):
    with pytest.raises(PassError) as e:
        parse_pipeline(spec)
    assert expected in str(e.value)


def test_pass_objects_are_validated_too():
    q = get_pass("quantize-weights")(bits=2)
    with pytest.raises(PassError, match=r"pipeline item #2 'quantize-weights\{bits=2\}': bits=2 is not supported"):
        parse_pipeline(["cse", q])


@pytest.mark.parametrize("spec, expected", [
    ("test-options{bits=four}", "option 'bits': expected int, got 'four'"),
    ("test-options{bits=5%}", "option 'bits': expected int, got '5%'"),
    ("test-options{ratio=five%}", "option 'ratio': expected float, got 'five%'"),
    ("test-options{sym=maybe}", "option 'sym': expected bool"),
    ("test-options{method=gptq}", "'gptq' is not one of rtn|awq"),
    ("test-options{dims=3}", "expected a list like [a,b]"),
    ("test-options{limit=x}", "option 'limit': cannot convert 'x' to int|none"),
    ("test-options{bits}", "must be written key=value"),
    ("test-options{bits=4", "unbalanced"),
    ("cse,,dce", "empty entry"),
])
def test_bad_values_name_pass_option_and_type(spec, expected):
    with pytest.raises(PassError) as e:
        parse_pipeline(spec)
    assert expected in str(e.value)
    if "option" in expected:
        assert "test-options" in str(e.value)


@pytest.mark.parametrize("spec", [
    "canonicalize,cse,dce",
    "test-options{bits=8,sym=false,method=awq,dims=[1,2],limit=3},fold-constants{max_elements=16}",
    "test-options{ratio=0.1,label=abc}",
])
def test_format_round_trips(spec):
    ps = parse_pipeline(spec)
    assert format_pipeline(ps) == spec
    assert format_pipeline(parse_pipeline(format_pipeline(ps))) == spec


def test_defaults_are_omitted_from_spec():
    assert format_pipeline(parse_pipeline("test-options{bits=4,sym=true}")) == "test-options"


def test_select_precision_defaults_to_gptq():
    """The default reaches the documented trade-off (benchmarks/RESULTS.md); `slimgraph passes` shows it."""
    (p,) = parse_pipeline("select-precision{target_ppl=5%}")
    assert p.method == "gptq" and p.needs_calibration()
    from slimgraph.passes import options
    assert "method: rtn|gptq|awq|awq-gptq = gptq" in options.describe(type(p))
