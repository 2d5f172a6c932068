"""Hypothesis strategies for almost valid JSON: junk values, and a document with one
place in it changed (a wrong type, a huge number, nested junk, a member dropped or
added)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

HUGE = [2**63, 2**64, -(2**64), 2**64 + 1, 10**30, 1e20, -1e20, 1e300, 2.0**64]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
junk = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def change(draw: st.DrawFn, node: Any, names: tuple[str, ...] = ("role", "type", "content")) -> Any:
    """``node`` with one place in it changed: descend at random, then replace, drop or
    add there (an added member is one of ``names``, or ``x``)."""
    if isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node)))
        return {**node, key: change(draw, node[key], names)}
    if isinstance(node, list) and node and draw(st.booleans()):
        i = draw(st.integers(0, len(node) - 1))
        return [*node[:i], change(draw, node[i], names), *node[i + 1 :]]
    if isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node)))
        return {k: v for k, v in node.items() if k != key}
    if isinstance(node, dict) and draw(st.booleans()):
        return {**node, draw(st.sampled_from([*names, "x"])): draw(junk)}
    return draw(junk | st.sampled_from([{}, [], "", 0, -1, {"role": {}}, {"type": {}}]))
