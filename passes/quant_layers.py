"""Which weight-times-activation layers quantize-weights sees, in the form it quantizes.

Every op that multiplies an activation by a constant weight is brought to one of the forms the
quantizer handles, each weight read as a 2-D [out, in] matrix (groups run along `in`):

    linear(x, @w[out, in])                       as is
    matmul(x, @w[in, out])                       -> linear(x, @w_t[out, in])   (GPT-2's Conv1D, einsum-free MLPs)
    matmul(x, permute(@w[out, in], [1, 0]))      -> linear(x, @w)
    conv2d(x, @w[O, C/g, kh, kw])                 W as [O, C/g*kh*kw]: per output channel, groups along
                                                   the input channels and kernel taps; the conv reads
                                                   reshape(dequantize(...), [O, C/g, kh, kw])
    embedding(@w[vocab, dim], ids)               W as [vocab, dim] (only when included: include=[...])

`normalize_matmuls` does the two matmul rewrites (a weight is transposed once, only when every
reader of it is such a matmul). `candidates` lists each weight with its readers and, for those
that cannot be quantized, the reason (it goes into the report).
"""
from __future__ import annotations

WEIGHT_INPUT = {"linear": 1, "conv2d": 1, "embedding": 0, "matmul": 1}


def normalize_matmuls(graph) -> int:
    """Rewrite matmuls by a constant 2-D weight into `linear` (see the module docstring); returns
    how many matmuls were rewritten."""
    done = 0
    transposed: dict[str, object] = {}
    for node in list(graph.nodes):
        if node.op != "matmul" or node.inputs[0].type.rank < 1:
            continue
        b = node.inputs[1]
        if b.is_weight and b.type.rank == 2 and b.type.is_static:
            if not all(u.op == "matmul" and u.inputs[1] is b and u.inputs[0] is not b for u in b.users):
                continue
            if b.name not in transposed:
                transposed[b.name] = graph.add_weight(graph.fresh_name(f"{b.name}.t"), b.tensor.t().contiguous())
            weight = transposed[b.name]
        elif (b.producer is not None and b.producer.op == "permute" and b.producer.attrs["dims"] == [1, 0]
              and b.producer.inputs[0].is_weight and b.producer.inputs[0].type.rank == 2):
            weight = b.producer.inputs[0]
        else:
            continue
        if node.inputs[0].type.rank == 1:
            continue
        with graph.inserting_before(node):
            lin = graph.add_node("linear", [node.inputs[0], weight], {}, names=[graph.fresh_name(node.output.name)])
        graph.replace_node(node, [lin.output])
        done += 1
    for name in transposed:
        if name in graph.weights and not graph.weights[name].uses:
            graph.remove_weight(name)
    for node in [n for n in graph.nodes if n.op == "permute" and not n.output.uses]:
        if not any(o is node.output for o in graph.outputs):
            graph.erase(node)
    return done


def readers(graph) -> dict[str, list]:
    """weight name -> the nodes that read it as their weight operand."""
    out: dict[str, list] = {}
    for n in graph.nodes:
        i = WEIGHT_INPUT.get(n.op)
        if i is not None and i < len(n.inputs) and n.inputs[i].is_weight:
            out.setdefault(n.inputs[i].name, []).append(n)
    return out


def layer_kind(users) -> str:
    ops = {u.op for u in users}
    if ops == {"linear"}:
        return "linear"
    if ops == {"conv2d"}:
        return "conv2d"
    if ops == {"embedding"}:
        return "embedding"
    if ops <= {"linear", "embedding"}:
        return "tied"            # a head that shares the embedding table
    return "mixed"


def matrix_shape(w) -> tuple[int, int]:
    """The 2-D [out, in] view the quantizer uses for weight `w`."""
    shape = w.type.shape
    k = 1
    for d in shape[1:]:
        k *= d
    return shape[0], k
