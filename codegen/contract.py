"""The codegen contract: a target builds a graph once into `Products`, and loads products into a `Runner`.

    products = target.build(graph)            # codegen: sources, libraries, model.onnx, packed weights
    runner = target.load(graph, products)     # no codegen: read the products, bind the graph's weights
    outs = runner(*tensors)                   # graph inputs in order -> list of graph outputs in order

An artifact stores the products next to the graph and its weights; `slimgraph.load` calls `load` alone
when the products' `host` matches this machine (`Target.host()`), and builds again from the stored
graph, saying so, when it does not (another torch version, another CPU capability, ...).

`Products.files` maps a plain file name to its content: `bytes`, a `Path` to read it from (an artifact
being loaded), or a dict of tensors (a safetensors file built in memory, serialized when saved).
`Products.meta` is JSON: the host it was built for, and whatever the target needs to load it.
"""
from __future__ import annotations
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch

FileContent = Union[bytes, Path, dict]


class ProductsError(ValueError):
    pass


@dataclass
class Products:
    files: dict[str, FileContent] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    live: dict = field(default_factory=dict, repr=False)   # objects only this process has (not saved)
    unstorable: list[str] = field(default_factory=list)     # why these products cannot be written to disk

    def read_bytes(self, name: str) -> bytes:
        content = self._get(name)
        if isinstance(content, Path):
            return content.read_bytes()
        if isinstance(content, dict):
            from safetensors.torch import save
            return save(content)
        return content

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of a safetensors product (memory-mapped when it is a file)."""
        content = self._get(name)
        if isinstance(content, dict):
            return content
        from safetensors.torch import load, load_file
        return load_file(str(content)) if isinstance(content, Path) else load(content)

    def write(self, directory: Path) -> list[str]:
        """Write every file into `directory`; returns their names."""
        if self.unstorable:
            raise ProductsError("these build products cannot be saved: " + "; ".join(self.unstorable))
        for name in self.files:
            if Path(name).name != name or name.startswith("."):
                raise ProductsError(f"build product {name!r} is not a plain file name")
            content = self.files[name]
            if isinstance(content, dict):
                from safetensors.torch import save_file
                save_file({k: v.contiguous() for k, v in content.items()}, str(directory / name))
            else:
                (directory / name).write_bytes(self.read_bytes(name))
        return sorted(self.files)

    def _get(self, name: str) -> FileContent:
        try:
            return self.files[name]
        except KeyError:
            raise ProductsError(f"build product {name!r} is missing (products: {sorted(self.files)})") from None


class Runner:
    """What `Target.load` returns. Subclasses implement `__call__`; the attributes are the protocol that
    optimize(), artifacts and the decoder runtime use (nothing else is probed for)."""
    notes: list[str]            # things the user should know (slow paths, fallbacks), put in the report
    products: Products          # what it was loaded from (saved into artifacts)
    device: str                 # where its tensors live: "cpu", "cuda", ...

    def __init__(self, products: Products, notes=(), device: str = "cpu"):
        self.products, self.notes, self.device = products, list(notes), device

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def truncate_state(self, t: torch.Tensor, axis: int, length: int) -> torch.Tensor:
        """State `t` rolled back to its first `length` rows along `axis` (an `append` state), without copying;
        rows past `length` may be overwritten by later calls."""
        return t.narrow(axis, 0, length)

    def keep_state(self, t: torch.Tensor) -> torch.Tensor:
        """State `t` as a tensor that later calls leave unchanged (the decoder keeps it to replay from). A call
        may consume the `ring` state it is given (the torch target slides the ring in place: codegen/torch_kv.py);
        this runner never writes into its inputs, so `t` itself."""
        return t
