"""BBPL's candidate vocabulary: word n-grams from the task's training text, merged by pointwise mutual information.

An n-gram (n <= `max_n`) is a candidate when it occurs at least `min_count` times and, for n > 1, its PMI
log(p(w1..wn) / (p(w1) ... p(wn))) is at least `min_pmi`: its words belong together far more often than chance. Words
(n = 1) only need the count. The `top` most frequent candidates are the vocabulary, ties broken alphabetically so
the same text always gives the same list. Mapping the n-grams to a model's token ids is the endpoint's business.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _WORD.findall(text.lower())


def pmi_ngrams(
    texts: list[str], *, max_n: int = 5, min_count: int = 5, min_pmi: float = 1.0, top: int = 200
) -> list[str]:
    """The `top` most frequent candidate n-grams of `texts` (see the module docstring), most frequent first."""
    if max_n < 1 or min_count < 1 or top < 1:
        raise ValueError("max_n, min_count and top must be >= 1")
    sentences = [words(t) for t in texts]
    counts: list[Counter] = [Counter() for _ in range(max_n + 1)]
    for tokens in sentences:
        for n in range(1, max_n + 1):
            for i in range(len(tokens) - n + 1):
                counts[n][tuple(tokens[i : i + n])] += 1
    totals = [sum(c.values()) for c in counts]
    if not totals[1]:
        return []

    def pmi(gram: tuple[str, ...]) -> float:
        joint = counts[len(gram)][gram] / totals[len(gram)]
        return math.log(joint) - sum(math.log(counts[1][(w,)] / totals[1]) for w in gram)

    candidates = [
        (count, gram)
        for n in range(1, max_n + 1)
        for gram, count in counts[n].items()
        if count >= min_count and (n == 1 or pmi(gram) >= min_pmi)
    ]
    candidates.sort(key=lambda item: (-item[0], item[1]))
    return [" ".join(gram) for _, gram in candidates[:top]]
