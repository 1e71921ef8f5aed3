"""slimgraph: a compiler for neural-network inference.

    fast = slimgraph.optimize(model, example_inputs, target="torch")
    fast.save("out/model.sg"); m = slimgraph.load("out/model.sg")

Imports are lazy so that `import slimgraph` needs torch only and stays fast.
"""
__version__ = "0.1.0"
__all__ = ["optimize", "load", "CompiledModel", "train_draft_heads", "distill_attention", "zoo", "export",
           "__version__"]

_LAZY = {"optimize": ("api", "optimize"), "load": ("artifact", "load"),
         "CompiledModel": ("compiled", "CompiledModel"), "train_draft_heads": ("draft", "train_draft_heads"),
         "distill_attention": ("linear_attention", "distill_attention")}


def __getattr__(name):
    import importlib
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    if name in ("zoo", "export"):     # subpackages: slimgraph.export.to_gguf(...) after a plain `import slimgraph`
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'slimgraph' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
