"""The curation TF-IDF classifier (scikit-learn) against the TF-IDF it replaced, written out by hand."""
import math
from collections import Counter

import numpy as np
import pytest

from m1.curation.domains import TfidfClassifier, _words, qualifiers


@pytest.fixture(scope="module")
def clf():
    return TfidfClassifier(qualifiers())


def test_matrix_is_the_textbook_tfidf(clf):
    # tf = 1 + log(count), idf = log((1 + docs) / (1 + docs with the word)) + 1, rows of unit length.
    docs = [_words(f"{q.title} {q.title} {q.title} {q.description}") for q in clf.quals]
    vocab = sorted({w for d in docs for w in d})
    df = Counter(w for d in docs for w in set(d))
    idf = np.array([math.log((1 + len(docs)) / (1 + df[w])) + 1 for w in vocab])
    rows = np.array([[1 + math.log(c[w]) if c[w] else 0.0 for w in vocab] for c in map(Counter, docs)]) * idf
    assert clf.vocab == {w: i for i, w in enumerate(vocab)}
    assert np.abs(clf.matrix.toarray() - rows / np.linalg.norm(rows, axis=1, keepdims=True)).max() < 1e-12


def test_scores_are_cosines_and_edges(clf):
    s = clf.scores([_words("the usual dosage and route of administration"), [], ["zzz"]])
    assert s.shape == (3, len(clf.quals)) and s.max() <= 1 + 1e-12
    assert clf.quals[int(s[0].argmax())].title == "Administration & Dosage"
    assert not s[1].any() and not s[2].any()  # no known word: zeros (OfflineLabeller leaves these unlabelled)
    assert clf.scores([]).shape == (0, len(clf.quals)) and clf.classify([]) == []
