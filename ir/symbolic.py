"""Symbolic dimensions.

A dim is an `int` or a canonical expression string over named symbols (`"seq"`, `"past+seq"`).
Symbols are bound at run time from the shapes of the graph inputs. sympy does the algebra.
"""
from functools import lru_cache
import sympy

Dim = int | str


@lru_cache(maxsize=4096)
def _expr(s: str) -> sympy.Expr:
    return sympy.sympify(s, locals={n: sympy.Symbol(n, integer=True) for n in _names(s)})


def _names(s: str) -> list[str]:
    import re
    return [n for n in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s)
            if n not in ("Max", "Min", "floor", "ceiling", "Mod", "FloorDiv")]


def canon(d) -> Dim:
    """Canonical form: plain ints stay ints, expressions become a space-free sympy string."""
    if isinstance(d, bool):
        raise TypeError("a dim cannot be a bool")
    if isinstance(d, int):
        return d
    if isinstance(d, str):
        return _canon_str(d)
    return _canon_expr(d if isinstance(d, sympy.Basic) else _expr(str(d)))


@lru_cache(maxsize=16384)
def _canon_str(s: str) -> Dim:
    # memoized: the same few dims ("seq", "past+seq") are canonicalized thousands of times per model
    return _canon_expr(_expr(s))


def _canon_expr(e) -> Dim:
    e = _simplify(e) if not e.is_Symbol else e
    if e.is_Integer:
        return int(e)
    return str(e).replace(" ", "")


def _simplify(e):
    """sympy.simplify, except that floors and ceilings are simplified from the inside out: each outermost one
    has its argument simplified (recursively) and stands as a placeholder symbol while the rest, a rational
    function of the placeholders, is simplified, then put back. sympy.simplify on a deep CNN's nested floors
    took up to a second per dim (a YOLO file's import spent 20-100 s in it); this gives the same forms in
    milliseconds (sympy applies floor's own rules, floor(x + 1) = floor(x) + 1, when it builds the floor)."""
    if not e.has(sympy.floor, sympy.ceiling):
        return sympy.simplify(e)
    atoms = {}

    def hide(x):
        if isinstance(x, (sympy.floor, sympy.ceiling)):
            key = type(x)(_simplify(x.args[0]))
            if not isinstance(key, (sympy.floor, sympy.ceiling)):
                return hide(key) if key.has(sympy.floor, sympy.ceiling) else key
            if key not in atoms:
                atoms[key] = sympy.Symbol(f"_sg_atom{len(atoms)}", integer=True)
            return atoms[key]
        return x.func(*[hide(a) for a in x.args]) if x.args else x
    return sympy.simplify(hide(e)).xreplace({v: k for k, v in atoms.items()})


def free_symbols(d: Dim) -> set[str]:
    return set() if isinstance(d, int) else {str(s) for s in _expr(d).free_symbols}


def evaluate(d: Dim, env: dict[str, int]) -> int:
    if isinstance(d, int):
        return d
    if d in env:
        return env[d]
    return int(_compiled(d)(**{k: env[k] for k in free_symbols(d)}))


@lru_cache(maxsize=4096)
def _compiled(d: str):
    """A function of the expression's symbols (sorted by name) computing it in exact integer arithmetic:
    floor(h/3 - 2/3) as (h - 2)//3, not math.floor of floats (which gives 0 at h = 5: 5/3 - 2/3 rounds below 1)."""
    e = _expr(d)
    args = sorted(str(s) for s in e.free_symbols)
    try:
        return eval(f"lambda {', '.join(args)}: {_int_code(e)}", {"max": max, "min": min})   # noqa: S307 (ours)
    except (_NotInteger, SyntaxError):   # not integer arithmetic, or a symbol named like a Python keyword
        return sympy.lambdify([sympy.Symbol(a, integer=True) for a in args], e, modules="math")


class _NotInteger(Exception):
    pass


def _int_code(e) -> str:
    """Python source computing sympy expression `e` (integer-valued) with ints only: a fraction num/den with
    integer-coefficient num as floor division (floor: num//den, ceiling: -(-num//den))."""
    if e.is_Integer:
        return str(int(e))
    if e.is_Symbol:
        return str(e)
    if isinstance(e, (sympy.floor, sympy.ceiling)):
        num, den = e.args[0].as_numer_denom()
        n, q = _poly_code(num), _poly_code(den)
        return f"(({n})//({q}))" if isinstance(e, sympy.floor) else f"(-((-({n}))//({q})))"
    if isinstance(e, (sympy.Max, sympy.Min)):
        return f"{'max' if isinstance(e, sympy.Max) else 'min'}({', '.join(_int_code(a) for a in e.args)})"
    if isinstance(e, sympy.Mod):
        return f"(({_int_code(e.args[0])})%({_int_code(e.args[1])}))"
    if isinstance(e, (sympy.Add, sympy.Mul, sympy.Pow)):
        num, den = e.as_numer_denom()
        if den != 1:   # an integer dim written as a fraction (h/2 + 1/2 where h is odd): exact when it divides
            return f"(({_poly_code(num)})//({_poly_code(den)}))"
        return _poly_code(e)
    raise _NotInteger(str(e))


def _poly_code(e) -> str:
    """`e` with integer coefficients (an Add/Mul/Pow of integer-valued parts)."""
    if isinstance(e, sympy.Add):
        return "(" + " + ".join(_poly_code(a) for a in e.args) + ")"
    if isinstance(e, sympy.Mul):
        return "(" + "*".join(_poly_code(a) for a in e.args) + ")"
    if isinstance(e, sympy.Pow):
        if not (e.exp.is_Integer and e.exp >= 0):
            raise _NotInteger(str(e))
        return f"(({_poly_code(e.base)})**{int(e.exp)})"
    if e.is_Rational and not e.is_Integer:
        raise _NotInteger(str(e))
    return _int_code(e)


def equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return a == b or _equal_str(str(a), str(b))


@lru_cache(maxsize=16384)
def _equal_str(a: str, b: str) -> bool:
    return sympy.simplify(_expr(a) - _expr(b)) == 0


def add(a: Dim, b: Dim) -> Dim:
    return a + b if isinstance(a, int) and isinstance(b, int) else canon(f"({a})+({b})")


def mul(a: Dim, b: Dim) -> Dim:
    return a * b if isinstance(a, int) and isinstance(b, int) else canon(f"({a})*({b})")


def floordiv(a: Dim, b: Dim) -> Dim:
    return a // b if isinstance(a, int) and isinstance(b, int) else canon(f"floor(({a})/({b}))")


def product(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = mul(out, d)
    return out
