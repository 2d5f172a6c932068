"""A small word model for the simulator: a Markov chain over short stories.

The corpus (``stories.txt``, beside this module) is plain text: one story per paragraph,
paragraphs separated by a blank line, sentence-cased, no quotation marks. Words keep
their punctuation (``"sea."``, ``"afternoon,"``), so a word that ends in ``.``, ``!`` or
``?`` ends a sentence, and the word after it starts one.

The chain walks the corpus itself. Its state is a position: the word just produced. The
next word is usually the one that follows in the corpus; now and then (``SPLICE``) it
first jumps to another position with the same last two words (order 2), or, where no
other position shares them, sometimes to one with the same last word (order 1). So every
step is one the corpus took, text reads naturally word to word, and stories still mix.
A plain order-2 chain, which would jump at every word, reads as word salad on a corpus
this small.

Generation is lazy and cheap per word (a few tuple lookups and random draws); the chain
is built once per process, on first use.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator
from importlib import resources

__all__ = ["WordModel", "default_model"]

#: How often the walk jumps to another place in the corpus with the same context.
SPLICE = 0.1
#: How often a due jump with no order-2 alternative takes an order-1 one instead.
FALLBACK = 0.3
#: A paragraph this many words long breaks at a sentence end (half of the time).
LONG_PARAGRAPH = 90

_PARAGRAPH = "\n\n"
_PUNCTUATION = ".,;:!?—-'"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# Words that say nothing about what a story should be about.
_STOPWORD_TEXT = """
    a about after again all also an and any are as at be because been before being but
    by can could did do does for from give had has have he her here him his how i if in
    into is it its just kind like make me more most my no not now of on once one or our
    out over please same she short should so some story stories tale tales tell than that
    the their them then there these they this time to too upon very was we were what when
    where which while who why will with write would you your
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _topic_form(word: str) -> str:
    """``"Dragon's,"`` → ``"dragon"``: the form prompt words are matched against."""
    word = word.strip(".,;:!?—-").lower()
    return word[:-2] if word.endswith("'s") else word


def _bare(word: str) -> str:
    return word.strip(_PUNCTUATION)


class WordModel:
    """A corpus walk with order-2 jumps and an order-1 fallback. See the module doc."""

    __slots__ = ("_alt1", "_alt2", "_ends", "_last", "_openers", "_story", "_topics", "_words")

    def __init__(self, text: str) -> None:
        words: list[str] = []
        last: list[bool] = []  # the last word of its paragraph
        story: list[int] = []  # which paragraph (story) the word is in
        openers: list[int] = []
        topics: dict[str, list[int]] = {}
        for paragraph in text.split("\n\n"):
            start = len(words)
            sentence = start
            keys: set[str] = set()
            for word in paragraph.split():
                words.append(word)
                last.append(False)
                story.append(len(openers))
                key = _topic_form(word)
                if len(key) >= 3 and key not in _STOPWORDS:
                    keys.add(key)
                if word[-1] in ".!?":
                    # A story's first sentence makes the better opening: weigh it up.
                    weight = 3 if sentence == start else 1
                    for key in keys:
                        topics.setdefault(key, []).extend([sentence] * weight)
                    sentence, keys = len(words), set()
            if len(words) > start:
                if words[-1][-1] not in ".!?":
                    raise ValueError(f"story {len(openers) + 1} does not end a sentence")
                openers.append(start)
                last[-1] = True
        if not openers:
            raise ValueError("the story corpus is empty")

        first = set(openers)
        by_pair: dict[tuple[str, str], list[int]] = {}
        by_word: dict[str, list[int]] = {}
        for pos, word in enumerate(words):
            before = "" if pos in first else words[pos - 1]
            by_pair.setdefault((before, word), []).append(pos)
            by_word.setdefault(word, []).append(pos)
        # Jumps land on a position and then step on from it: the last word of a
        # paragraph has no step, so it is no place to land.
        alt2: list[tuple[int, ...]] = [()] * len(words)
        alt1: list[tuple[int, ...]] = [()] * len(words)
        for group, alts in ((by_pair.values(), alt2), (by_word.values(), alt1)):
            for positions in group:
                targets = tuple(p for p in positions if not last[p])
                if len(targets) > 1:
                    for pos in positions:
                        alts[pos] = targets
        self._words = tuple(words)
        self._last = tuple(last)
        self._story = tuple(story)
        self._ends = tuple(word[-1] in ".!?" for word in words)
        self._alt2 = tuple(alt2)
        self._alt1 = tuple(alt1)
        self._openers = tuple(openers)
        self._topics = {key: tuple(starts) for key, starts in topics.items()}

    def topics(self, prompt: str) -> list[str]:
        """The words of ``prompt`` that some sentence of the corpus is about, in order."""
        found: list[str] = []
        for word in _WORD.findall(prompt.lower()):
            plural = word.endswith("s")
            for form in (word, word[:-1] if plural else "", word[:-2] if plural else ""):
                if form in self._topics:
                    if form not in found:
                        found.append(form)
                    break
        return found

    def phrase(self, rng: random.Random, count: int) -> str:
        """``count`` words that follow each other in the corpus, without punctuation:
        the stuff of made-up string values (``"packed bread and cheese"``)."""
        words = self._words
        for _ in range(4):  # rather open on a word that says something
            start = rng.randrange(max(1, len(words) - count))
            if _topic_form(words[start]) not in _STOPWORDS:
                break
        run = [_bare(word) for word in words[start : start + count]]
        return " ".join(word for word in run if word) or "story"

    def word(self, rng: random.Random) -> str:
        """One corpus word without punctuation (never empty)."""
        return _bare(rng.choice(self._words)) or "story"

    def story(
        self, rng: random.Random, length: int, prompt: str = "", limit: int | None = None
    ) -> Iterator[str]:
        """Yield a story word by word, each with its leading space or paragraph break.

        The story opens at the start of a sentence (one about a topic of ``prompt`` when
        there is one, else the first of some story) and ends at the first sentence end
        after ``length`` words, or earlier, before a sentence that would take it past
        ``limit`` words. Only a first sentence can be longer than ``limit``; the caller
        cuts it. The text depends only on the arguments.
        """
        topics = self.topics(prompt)
        starts = self._topics[rng.choice(topics)] if topics else self._openers
        count = 0
        for sentence in self._sentences(rng, rng.choice(starts)):
            if count and limit is not None and count + len(sentence) > limit:
                return
            yield from sentence
            count += len(sentence)
            if count >= length:
                return

    def _sentences(self, rng: random.Random, pos: int) -> Iterator[list[str]]:
        """Walk the chain from ``pos``, a sentence start, one sentence at a time."""
        words, last, ends, alt2, alt1 = self._words, self._last, self._ends, self._alt2, self._alt1
        openers, story, choice, chance = self._openers, self._story, rng.choice, rng.random
        visited = {story[pos]}
        sentence = [words[pos]]
        in_paragraph = 1
        # The opening sentence is one of the corpus, whole: no jumps until it ends.
        splice = 0.0
        while True:
            sep = " "
            if ends[pos]:
                yield sentence
                sentence = []
                splice = SPLICE
                if in_paragraph >= LONG_PARAGRAPH and chance() < 0.5:
                    sep, in_paragraph = _PARAGRAPH, 0
            if last[pos]:
                # The end of one story: go on with the opening of another, preferably
                # one this walk has not been through yet.
                for _ in range(8):
                    pos = choice(openers)
                    if story[pos] not in visited:
                        break
                sep, in_paragraph = _PARAGRAPH, 0
                visited.add(story[pos])
            else:
                if chance() < splice:
                    if alt2[pos]:
                        pos = choice(alt2[pos])
                    elif alt1[pos] and chance() < FALLBACK:
                        pos = choice(alt1[pos])
                    visited.add(story[pos])
                pos += 1
            sentence.append(sep + words[pos])
            in_paragraph += 1


@functools.cache
def default_model() -> WordModel:
    """The model over the bundled corpus, built on first use and kept for the process."""
    text = resources.files("sluice.providers").joinpath("stories.txt").read_text(encoding="utf-8")
    return WordModel(text)
