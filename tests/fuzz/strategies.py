"""Hypothesis strategies over the body builders of :mod:`tests.fuzz.bodies`.

Each choice a builder makes is a hypothesis draw, so a failing batch shrinks towards fewer
bodies, fewer mutations and the first (most ordinary) option of every choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

from tests.fuzz.bodies import FuzzBody, any_body
from tests.fuzz.harness import BAD_SIGNATURES, Post

T = TypeVar("T")

# Surrogates included: the default alphabet leaves them out, and they are defect 3.
_ANY_CHARACTER = st.characters(exclude_categories=())


class HypothesisChooser:
    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def chance(self, percent: int) -> bool:
        # Shrinks to 0: towards "no".
        return self._draw(st.integers(0, 99)) >= 100 - percent

    def choice(self, options: Sequence[T]) -> T:
        return options[self._draw(st.integers(0, len(options) - 1))]

    def text(self, max_size: int) -> str:
        return self._draw(st.text(_ANY_CHARACTER, max_size=max_size))


@st.composite
def webhook_bodies(draw: st.DrawFn, serial: int = 0, many: int = 40) -> FuzzBody:
    """A hostile envelope or a mutated one; its wamids start with ``wamid.FZ<serial>x``."""
    return any_body(HypothesisChooser(draw), serial, many=many)


@st.composite
def post_batches(draw: st.DrawFn, max_bodies: int = 6, many: int = 40) -> list[Post]:
    """Bodies to post together: now and then repeated (Meta's retries, racing each other) or
    sent with a wrong signature."""
    count = draw(st.integers(1, max_bodies))
    posts: list[Post] = []
    for serial in range(count):
        body = draw(webhook_bodies(serial, many))
        copies = draw(st.sampled_from((1, 1, 1, 1, 2, 3, 10)))
        signed = draw(st.integers(0, 9)) > 0
        bad = draw(st.integers(0, len(BAD_SIGNATURES) - 1)) if not signed else 0
        posts.extend(Post(body, signed, bad) for _ in range(copies))
    order = draw(st.permutations(range(len(posts))))
    return [posts[n] for n in order]
