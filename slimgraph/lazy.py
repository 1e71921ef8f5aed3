"""`LazyModule("torch")`: a module imported on its first attribute use, so that modules the light CLI commands
load (`slimgraph inspect` reads a report and a signature) do not pay for `import torch`."""
import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)
