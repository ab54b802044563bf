"""Pick the outside records most like the test inputs: rank candidates by their largest cosine to any
test record, on boilerplate-free cores (boilerplate learnt from the test set), with character n-gram
TF-IDF; the sparse product is taken in chunks of candidates so 200k x 8k never needs a dense matrix."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from filters.boilerplate import Boilerplate

CHUNK = 2048  # candidates per sparse product: a dense chunk x 8k test block is 64 MiB in float32
_CHIEF_RE = re.compile(r"^\s*主诉\s*[:：]\s*(.*)$", re.MULTILINE)


def max_similarity(
    candidates: list[str],
    tests: list[str],
    *,
    analyzer: str = "char_wb",
    ngram: tuple[int, int] = (2, 3),
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(largest cosine of each candidate to any test text, index of that test text)."""
    if not candidates:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram, sublinear_tf=True, dtype=np.float32)
    # IDF over both sides: an n-gram every candidate shares says as little as one every test shares
    vectorizer.fit([*tests, *candidates])
    test_matrix = vectorizer.transform(tests).T.tocsc()
    best = np.zeros(len(candidates), dtype=np.float32)
    owner = np.zeros(len(candidates), dtype=np.int64)
    for start in range(0, len(candidates), chunk):
        block = (vectorizer.transform(candidates[start : start + chunk]) @ test_matrix).toarray()
        owner[start : start + len(block)] = block.argmax(axis=1)
        best[start : start + len(block)] = block.max(axis=1)
        if progress is not None:
            progress(start + len(block), len(candidates))
    return best, owner


def rank(
    candidates: list[str],
    tests: list[str],
    *,
    top: int | None = None,
    threshold: float | None = None,
    **options: Any,
) -> list[tuple[int, float]]:
    """(candidate index, similarity), best first: the `top` best and/or those at or above `threshold`.

    Both sides are compared on their cores: the boilerplate learnt from the test texts is removed, so
    template text the test set repeats does not make every candidate look alike."""
    boilerplate = Boilerplate.learn(tests)
    scores, _ = max_similarity(
        [boilerplate.core(t) for t in candidates], [boilerplate.core(t) for t in tests], **options
    )
    order = np.argsort(-scores, kind="stable")
    if threshold is not None:
        order = order[scores[order] >= threshold]
    if top is not None:
        order = order[:top]
    return [(int(i), float(scores[i])) for i in order]


def chief_complaint(text: str) -> str:
    match = _CHIEF_RE.search(text)
    return match.group(1).strip() if match else ""


def distribution(texts: Iterable[str], top: int = 10) -> dict[str, Any]:
    """Records, mean/median characters and the `top` most frequent chief complaints (the `主诉:` line)."""
    texts = list(texts)
    lengths = [len(t) for t in texts]
    chiefs = Counter(c for c in map(chief_complaint, texts) if c)
    return {
        "records": len(texts),
        "mean_chars": round(statistics.fmean(lengths), 1) if lengths else 0.0,
        "median_chars": statistics.median(lengths) if lengths else 0,
        "chief_complaints": chiefs.most_common(top),
    }


def format_distribution(name: str, dist: dict[str, Any]) -> str:
    chiefs = "、".join(f"{c} ({n})" for c, n in dist["chief_complaints"]) or "-"
    return (
        f"{name}: {dist['records']} records, chars mean {dist['mean_chars']} median {dist['median_chars']}\n"
        f"    top chief complaints: {chiefs}"
    )
