"""Graph storage: nodes in a doubly linked list, uses in an insertion-ordered dict.

A graph's nodes are kept in program order in a `NodeList` (after onnx-ir's `_linked_list.py`):
append, insert before/after a node and remove are O(1); iteration is in order and tolerates
mutation (a node removed while an iterator stands on it still leads to its old successor; removed
nodes are skipped, nodes inserted ahead of the iterator are visited). There is no `index()`: a pass
that needs to compare positions takes `positions()` once (O(n)) and looks nodes up in it.

    nodes = graph.nodes
    len(nodes); nodes[0]; nodes[-1]        # indexing walks the list: O(i), for tests and debugging
    pos = nodes.positions()                # {node: i}: first = min(users, key=pos.__getitem__)
    nodes.prev(n); nodes.next(n)           # neighbours, O(1)
    nodes.between(a, b)                    # the nodes strictly between a and b (a before b)

A value's uses are a `Uses`: an insertion-ordered set of (node, input index) pairs with O(1) add
and remove, read like the list it replaces (`for node, i in v.uses`, `len`, `v.uses[0]`,
`v.uses == [(n, 0)]`).
"""
from __future__ import annotations

from typing import Iterable, Iterator


class _Root:
    """The sentinel that closes the ring: root._next is the first node, root._prev the last."""
    __slots__ = ("_prev", "_next")

    def __init__(self):
        self._prev = self._next = self


class NodeList:
    """The nodes of one graph, in program order. Nodes carry `_prev`, `_next` and `_owner` slots."""
    __slots__ = ("_root", "_len")

    def __init__(self, nodes: Iterable = ()):
        self._root, self._len = _Root(), 0
        for n in nodes:
            self.append(n)

    # ---- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __contains__(self, node) -> bool:
        return getattr(node, "_owner", None) is self

    def __iter__(self) -> Iterator:
        root, cur = self._root, self._root._next
        while cur is not root:
            if cur._owner is self:
                yield cur
            cur = cur._next

    def __reversed__(self) -> Iterator:
        root, cur = self._root, self._root._prev
        while cur is not root:
            if cur._owner is self:
                yield cur
            cur = cur._prev

    def __getitem__(self, i):
        """O(i) (O(1) for 0 and -1); slices return a list. Passes iterate instead."""
        if isinstance(i, slice):
            return list(self)[i]
        n = self._len
        if not -n <= i < n:
            raise IndexError(f"node index {i} out of range for a graph of {n} nodes")
        if i < 0:
            it, steps = reversed(self), -i - 1
        else:
            it, steps = iter(self), i
        for _ in range(steps):
            next(it)
        return next(it)

    def __eq__(self, other):
        if isinstance(other, (NodeList, list, tuple)):
            return len(self) == len(other) and all(a is b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"NodeList({list(self)!r})"

    def positions(self) -> dict:
        """{node: its index}: O(n) once, then O(1) order comparisons until the list changes."""
        return {n: i for i, n in enumerate(self)}

    def prev(self, node):
        """The node right before `node`, or None at the start. O(1)."""
        self._check(node)
        return None if node._prev is self._root else node._prev

    def next(self, node):
        """The node right after `node`, or None at the end. O(1)."""
        self._check(node)
        return None if node._next is self._root else node._next

    def between(self, first, last) -> list:
        """The nodes strictly after `first` and before `last` (`first` None: from the start)."""
        out, cur = [], (self._root if first is None else first)._next
        while cur is not last:
            if cur is self._root:
                raise ValueError("NodeList.between: `last` does not follow `first`")
            if cur._owner is self:
                out.append(cur)
            cur = cur._next
        return out

    # ---- mutation ----------------------------------------------------------------------------
    def append(self, node):
        self._link(node, self._root._prev)

    def insert_before(self, ref, node):
        self._check(ref)
        self._link(node, ref._prev)

    def insert_after(self, ref, node):
        self._check(ref)
        self._link(node, ref)

    def remove(self, node):
        """Unlink `node`. Its own links are kept, so an iterator standing on it moves on."""
        self._check(node)
        node._prev._next = node._next
        node._next._prev = node._prev
        node._owner = None
        self._len -= 1

    def _link(self, node, after):
        if getattr(node, "_owner", None) is not None:
            raise ValueError(f"node {node.op} is already in a graph; remove it first")
        node._prev, node._next = after, after._next
        after._next._prev = node
        after._next = node
        node._owner = self
        self._len += 1

    def _check(self, node):
        if getattr(node, "_owner", None) is not self:
            raise ValueError(f"node {getattr(node, 'op', node)!r} is not in this graph")


class Uses:
    """A value's uses: (node, input index) pairs in the order they were added; O(1) add/remove."""
    __slots__ = ("_d",)

    def __init__(self, pairs: Iterable = ()):
        self._d = dict.fromkeys(pairs)

    def add(self, node, i: int):
        self._d[(node, i)] = None

    def append(self, use):
        """List-style add of one (node, i) pair."""
        self._d[tuple(use)] = None

    def remove(self, use):
        try:
            del self._d[tuple(use)]
        except KeyError:
            raise ValueError(f"use {use!r} is not recorded") from None

    def discard(self, use):
        self._d.pop(tuple(use), None)

    def clear(self):
        self._d.clear()

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)

    def __bool__(self):
        return bool(self._d)

    def __contains__(self, use):
        return tuple(use) in self._d

    def __getitem__(self, i):
        return list(self._d)[i]

    def __eq__(self, other):
        if isinstance(other, Uses):
            return list(self._d) == list(other._d)
        if isinstance(other, (list, tuple)):
            return list(self._d) == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return repr(list(self._d))
