"""slimgraph.ir: the graph IR (types, ops, graph, text form, verifier, interpreter)."""
from .dtypes import from_torch, to_torch
from .graph import Graph, Node, Value
from .interpreter import Interpreter, InterpreterError, run
from .parser import ParseError, parse_graph
from .printer import print_graph
from .registry import Attr, OpDef, all_ops, get_op, register_op
from .types import TensorType
from .verifier import VerifyError, verify

__all__ = ["Graph", "Node", "Value", "TensorType", "Attr", "OpDef", "register_op", "get_op", "all_ops",
           "print_graph", "parse_graph", "ParseError", "verify", "VerifyError", "Interpreter",
           "InterpreterError", "run", "to_torch", "from_torch"]
