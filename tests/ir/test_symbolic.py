"""Symbolic dims (ir/symbolic.py): canonical forms, and the nested floors of deep CNNs canonicalized from the
inside out (each outermost floor a placeholder while the rest is simplified) in the forms sympy.simplify gives,
without its cost (a YOLOv8 file's import spent 20-100 s in simplify on them; ~3 s in all now)."""
import sympy

from slimgraph.ir import symbolic as S


def _conv(d: str, k=3, s=2, p=1) -> str:
    return f"floor(({d}+{2 * p - k})/{s})+1"


def _old(text: str):
    e = sympy.simplify(S._expr(text))
    return int(e) if e.is_Integer else str(e).replace(" ", "")


def test_canonical_forms_of_plain_dims_are_unchanged():
    assert S.canon("seq + past") == "past+seq"
    assert S.canon("2*seq - seq") == "seq"
    assert S.canon("(h + 2 - 3)/2 - (h - 1)/2") == 0
    assert S.canon(7) == 7


def test_nested_floors_get_sympy_simplify_forms():
    h, w = "height", "width"
    for _ in range(5):                      # a stride-2 backbone: five convolutions deep
        h, w = _conv(h), _conv(w)
    cases = [h, w, f"({h})*({w})", f"(2*{h}+2)*(3*{w}+3)", f"({h})*({w})*4 + 20*({h})*({w})",
             "floor(floor(x/2)/2)+floor(x/4)", "ceiling((n-1)/2)*2+floor(n/3)-1", "floor(n+1)-floor(n/2)*2",
             f"Max({h}, 1) + Min(ceiling(m/2), 3)"]
    for text in cases:
        assert S.canon(text) == _old(text), text


def test_equal_dims_spelled_differently_canonicalize_alike():
    h = "floor((floor((h-1)/2)+1-1)/2)+1"
    assert S.canon(f"2*({h}) + 2*({h})") == S.canon(f"4*({h})")
    assert S.canon(f"({h})*({h}) - ({h})**2") == 0
