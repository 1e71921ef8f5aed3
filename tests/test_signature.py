"""Call signatures: pytree specs <-> JSON (no pickle), with fallbacks for classes that are gone."""
import collections
import json

import pytest
import torch
import torch.utils._pytree as pytree

from slimgraph.signature import Signature, SignatureError, spec_from_json, spec_to_json

Point = collections.namedtuple("Point", "x y")


def round_trip(obj):
    leaves, spec = pytree.tree_flatten(obj)
    data = json.loads(json.dumps(spec_to_json(spec)))  # must survive real JSON
    return pytree.tree_unflatten(leaves, spec_from_json(data)), spec_from_json(data) == spec


def test_builtin_containers_round_trip():
    t = torch.ones(1)
    obj = ((t, [t, None]), {"a": t, 3: (t,)}, Point(t, t))
    rebuilt, same = round_trip(obj)
    assert same and type(rebuilt[2]) is Point and rebuilt[1][3][0] is t and rebuilt[0][1][1] is None


def test_transformers_output_class_round_trip():
    mo = pytest.importorskip("transformers.modeling_outputs")
    out = mo.BaseModelOutputWithPooling(last_hidden_state=torch.ones(2), pooler_output=torch.zeros(2))
    rebuilt, same = round_trip(out)
    assert same and type(rebuilt) is mo.BaseModelOutputWithPooling
    assert torch.equal(rebuilt.pooler_output, out.pooler_output)


def test_missing_classes_fall_back_to_dict_and_namedtuple():
    data = {"type": "tuple", "children": [
        {"type": "class", "class": "gone.module.Output", "fields": ["logits", "hidden"],
         "children": [{"type": "leaf"}, {"type": "leaf"}]},
        {"type": "namedtuple", "class": "gone.module.Pair", "fields": ["lo", "hi"],
         "children": [{"type": "leaf"}, {"type": "leaf"}]}]}
    out, pair = pytree.tree_unflatten([1, 2, 3, 4], spec_from_json(data))
    assert out == {"logits": 1, "hidden": 2}
    assert pair.hi == 4 and type(pair).__name__ == "Pair"


def test_unserializable_context_is_refused():
    class Box:
        def __init__(self, v):
            self.v = v
    pytree.register_pytree_node(Box, lambda b: ([b.v], object()), lambda xs, ctx: Box(xs[0]))
    try:
        _, spec = pytree.tree_flatten(Box(torch.ones(1)))
        with pytest.raises(SignatureError, match="cannot describe pytree node .*Box"):
            spec_to_json(spec)
    finally:
        pytree._deregister_pytree_node(Box)


def test_signature_json_round_trip_and_binding():
    _, in_spec = pytree.tree_flatten(((torch.ones(1),), {"mask": torch.ones(1), "ids": torch.ones(1)}))
    sig = Signature("pytree", in_spec, None, ["x", "mask", "ids"], ["x", "mask", "ids"], [0, 1, 2])
    back = Signature.from_json(json.loads(json.dumps(sig.to_json())))
    a, m, i = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [t.item() for t in back.flatten_call((a,), {"ids": i, "mask": m})] == [0.0, 1.0, 2.0]
    assert [t.item() for t in back.flatten_call((a, m, i), {})] == [0.0, 1.0, 2.0]  # by parameter names
    with pytest.raises(SignatureError, match="missing \\['ids'\\]"):
        back.flatten_call((a, m), {})
