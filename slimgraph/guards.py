"""Guards: what a compiled model specialized on at export, checked on every call.

torch.export bakes non-tensor arguments (`use_cache=False`, `mode="fast"`, `n=3`) into the graph and
fixes every dim it was not told is dynamic (always the dims of size 0 or 1 in the example). A call
that differs would run a program compiled for other values: wrong shapes or wrong answers, silently.
`Guards` records each specialization with the argument's name and refuses such a call with an error
that names the argument and how to compile for it:

    fast = slimgraph.optimize(model, (x,), example_kwargs={"flag": True})
    fast(x, flag=False)   # GuardError: argument 'flag' was True when the model was compiled ...

Guards live in the Signature (its JSON form), so a loaded artifact checks them too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .lazy import LazyModule

torch = LazyModule("torch")
pytree = LazyModule("torch.utils._pytree")


FORCED = "the model's code fixes it: torch.export could not keep it dynamic (see the report's notes)"


class GuardError(TypeError):   # a call the compiled model was not compiled for (as SignatureError)
    """A call differs from what the compiled model specialized on."""


_JSONABLE = (bool, int, float, str, type(None))


@dataclass
class Guards:
    constants: dict[int, tuple[str, Any]] = field(default_factory=dict)   # leaf -> (name, value or {"repr"})
    dims: dict[int, tuple[str, dict[int, tuple[int, str]]]] = field(default_factory=dict)  # leaf -> (name, {dim: (size, why)})
    dtypes: dict[int, tuple[str, str]] = field(default_factory=dict)       # leaf -> (name, torch dtype name)

    @staticmethod
    def of(leaves: list, names: list[str], constant_leaves: dict[int, Any], tensor_leaves: list[int],
           input_types: list, forced: dict | None = None) -> Guards:
        """Guards for an export on `leaves` (the flattened example call): the baked-in constants, and for
        each tensor leaf its graph input's static dims and dtype. `forced`: {argument name: dims} that torch.export
        could not keep dynamic (the model's code fixes them): their error says to compile for the shape."""
        g = Guards()
        for i, v in constant_leaves.items():
            g.constants[i] = (names[i], v if isinstance(v, _JSONABLE) else {"repr": repr(v)})
        for i, t in zip(tensor_leaves, input_types):
            ex = leaves[i]
            g.dtypes[i] = (names[i], str(ex.dtype).removeprefix("torch."))
            fixed = {}
            for d, (dim, size) in enumerate(zip(t.shape, ex.shape)):
                if isinstance(dim, int):
                    why = (FORCED if d in (forced or {}).get(names[i], ()) else
                           "the example's size: torch.export fixes dims of size 0 or 1" if size <= 1 else
                           "as in the example: no dynamic_shapes entry makes it dynamic")
                    fixed[d] = (int(size), why)
            if fixed:
                g.dims[i] = (names[i], fixed)
        return g

    def check(self, leaves: list) -> None:
        for i, (name, want) in self.constants.items():
            got = leaves[i]
            same = repr(got) == want["repr"] if isinstance(want, dict) else (type(got) is type(want) and got == want)
            if not same:
                shown = want["repr"] if isinstance(want, dict) else repr(want)
                raise GuardError(
                    f"argument {name!r} was {shown} when the model was compiled and is baked into the graph; "
                    f"got {got!r}. Compile again with this value (pass it in example_inputs/example_kwargs "
                    f"to slimgraph.optimize); each value needs its own compiled model.")
        for i, (name, want) in self.dtypes.items():
            t = leaves[i]
            if isinstance(t, torch.Tensor) and str(t.dtype).removeprefix("torch.") != want:
                raise GuardError(f"argument {name!r} was compiled for dtype {want}, got {t.dtype}: cast it, or "
                                 f"compile again with a {str(t.dtype).removeprefix('torch.')} example.")
        for i, (name, fixed) in self.dims.items():
            t = leaves[i]
            if not isinstance(t, torch.Tensor):
                continue
            for d, (size, why) in fixed.items():
                if d < t.dim() and t.shape[d] != size and why == FORCED:
                    raise GuardError(
                        f"argument {name!r} dim {d} was compiled for size {size} ({why}), got shape "
                        f"{tuple(t.shape)}. Compile again with an example of this shape (pad or cut the input to "
                        f"{size} along dim {d}, or keep one compiled model per size).")
                if d < t.dim() and t.shape[d] != size:
                    raise GuardError(
                        f"argument {name!r} dim {d} was compiled for size {size} ({why}), got shape "
                        f"{tuple(t.shape)}. Make it dynamic: slimgraph.optimize(..., dynamic_shapes="
                        f"{{{name!r}: {{{d}: torch.export.Dim('{name}_d{d}')}}}}) with an example whose dim {d} "
                        f"is at least 2, or compile again with this shape.")

    # ---- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"constants": [[i, n, v] for i, (n, v) in self.constants.items()],
                "dims": [[i, n, [[d, s, w] for d, (s, w) in f.items()]] for i, (n, f) in self.dims.items()],
                "dtypes": [[i, n, dt] for i, (n, dt) in self.dtypes.items()]}

    @staticmethod
    def from_json(d: dict | None) -> Guards:
        d = d or {}
        return Guards({i: (n, v) for i, n, v in d.get("constants", [])},
                      {i: (n, {dd: (s, w) for dd, s, w in f}) for i, n, f in d.get("dims", [])},
                      {i: (n, dt) for i, n, dt in d.get("dtypes", [])})


def leaf_names(args: tuple, kwargs: dict, param_names: list[str]) -> list[str]:
    """A readable name for each leaf of the flattened (args, kwargs): the parameter name, with the
    path inside a nested argument (`past[0]`, `inputs['mask']`)."""
    names = []
    for path, _ in pytree.tree_flatten_with_path((args, kwargs))[0]:
        top, key, rest = path[0], path[1], path[2:]
        if getattr(top, "idx", 0) == 0:
            i = key.idx
            base = param_names[i] if i < len(param_names) else f"args[{i}]"
        else:
            base = str(key.key)
        names.append(base + pytree.keystr(rest))
    return names
