"""BBPL's PMI n-gram vocabulary."""

from __future__ import annotations

import pytest

from nograd.tasks import get_task
from nograd.vocab import pmi_ngrams, words


def test_collocations_merge_and_chance_pairs_do_not():
    texts = ["we flew to new york city today"] * 6 + [
        f"the {w} and the {v}" for w, v in [("cat", "dog"), ("sun", "moon"), ("red", "blue")] * 3
    ]
    vocab = pmi_ngrams(texts, min_count=5, min_pmi=1.0, top=50)
    assert "new york city" in vocab and "new york" in vocab
    assert "the cat" not in vocab  # too rare
    assert "the" in vocab and vocab.index("the") < vocab.index("new york")  # most frequent first


def test_deterministic_and_bounded():
    texts = [e.text for e in get_task("mr").pool[:500]]
    first = pmi_ngrams(texts, top=100)
    assert first == pmi_ngrams(list(texts), top=100) and len(first) == 100
    assert any(" " in gram for gram in first)  # some multi-word n-grams survive the PMI filter


def test_words_and_bad_arguments():
    assert words("It's GREAT, isn't it?") == ["it's", "great", ",", "isn't", "it", "?"]
    assert pmi_ngrams([]) == []
    with pytest.raises(ValueError):
        pmi_ngrams(["a"], top=0)
