"""ROUGE-L similarity that agrees exactly with rouge-score, correct for Chinese, fast enough for streams.

`CJKTokenizer` is rouge-score's tokenizer plus one token per CJK character. `rouge_l(target, prediction)`
is rouge-score's rougeL F1. `RougeIndex` holds the texts kept so far and answers "which kept text scores
above t against this one?" without scoring every pair: a length window and a bag-of-tokens bound from an
inverted index prove most pairs cannot reach t, and rapidfuzz computes the LCS of the rest. The bounds
are upper bounds on the LCS, so no pair above t is ever skipped.

Orientation (as Self-Instruct's `scorer.score(new, existing)` and Alpaca's `_score_lcs(new_tokens,
existing_tokens)`): the new text is rouge-score's *target*, the kept text its *prediction*, i.e.
precision = LCS / len(kept) and recall = LCS / len(new).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

# Han (with extensions and compatibility ideographs), kana, Hangul syllables, 々 and 〇.
_CJK = (
    "\u3005\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7a3\uf900-\ufaff\U00020000-\U0003134f"
)
_TOKEN_RE = re.compile(f"[a-z0-9]+|[{_CJK}]")


class CJKTokenizer:
    """rouge-score's default tokenizer (lower-case, runs of [a-z0-9]) plus one token per CJK character.

    Usable as `rouge_scorer.RougeScorer(["rougeL"], tokenizer=CJKTokenizer())`. On text without CJK
    characters it returns exactly what rouge-score's default tokenizer (without stemming) returns.
    """

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN_RE.findall(text.lower())


def f1_from_lcs(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge-score's F1 with its own arithmetic (2PR/(P+R)), so decisions at a threshold match exactly."""
    if lcs <= 0 or target_len <= 0 or prediction_len <= 0:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    return 2 * precision * recall / (precision + recall)


def _f1_array(lcs: np.ndarray, target_len: int, prediction_len: np.ndarray) -> np.ndarray:
    """`f1_from_lcs` element-wise; float64 numpy division and products round exactly as Python's do."""
    lcs = lcs.astype(np.float64)
    precision = lcs / prediction_len
    recall = lcs / target_len
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.where(lcs > 0, f1, 0.0)


def rouge_l(target: str, prediction: str, tokenizer: Any = None) -> float:
    """rouge-score's rougeL F1 of two texts (same tokenizer, same arithmetic), via rapidfuzz's LCS."""
    tok = tokenizer or CJKTokenizer()
    a, b = tok.tokenize(target), tok.tokenize(prediction)
    if not a or not b:
        return 0.0
    return f1_from_lcs(int(LCSseq.similarity(a, b)), len(a), len(b))


@lru_cache(maxsize=65536)
def _window(m: int, threshold: float) -> tuple[int, int, int]:
    """(n_lo, n_hi, lcs_needed) for a new text of m tokens: only kept lengths n_lo..n_hi can exceed the
    threshold (LCS <= min(m, n)), and none of them with an LCS below lcs_needed (the least LCS needed
    at n_lo; the least LCS needed grows with n). Found with the exact F1 arithmetic, not a formula."""
    n_lo = max(1, int(threshold * m / (2 - threshold)) - 2)
    while f1_from_lcs(min(m, n_lo), m, n_lo) <= threshold:
        n_lo += 1
    n_hi = int(m * (2 - threshold) / max(threshold, 1e-9)) + 2 if threshold > 0 else 1 << 30
    while n_hi > m and f1_from_lcs(m, m, n_hi) <= threshold:
        n_hi -= 1
    need = max(1, int(threshold * (m + n_lo) / 2) - 2)
    while f1_from_lcs(need, m, n_lo) <= threshold:
        need += 1
    return n_lo, n_hi, need


class _Grow:
    """An append-only int32 array (numpy, capacity doubling): postings and lengths of the index."""

    __slots__ = ("data", "size")

    def __init__(self, capacity: int = 4):
        self.data = np.empty(capacity, dtype=np.int32)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.empty(len(self.data), dtype=np.int32)])
        self.data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self.data[: self.size]


@dataclass(frozen=True)
class Match:
    """The kept item a text is closest to (above the threshold asked for) and its ROUGE-L F1."""

    id: Any
    score: float


_UNKNOWN = "\x00"  # code of tokens no kept text has: it can match nothing


class RougeIndex:
    """The kept set of a ROUGE-L near-duplicate filter: `add(id, text)`, `best_match(text, t)`.

    Memory is linear in the kept set: one encoded string, one length, and one posting per distinct
    token of each kept text. `counters` tallies how many pairs each bound pruned (for benchmarks).
    """

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer or CJKTokenizer()
        self._vocab: dict[str, str] = {}  # token -> one code point, so rapidfuzz compares token sequences
        self._ids: list[Any] = []
        self._seqs: list[str] = []
        self._lens = _Grow(1024)
        self._postings: dict[str, tuple[_Grow, _Grow]] = {}  # code -> (item indexes, token counts)
        self.counters = Counter()

    def __len__(self) -> int:
        return len(self._ids)

    def _encode(self, text: str, *, grow: bool) -> str:
        tokens = self.tokenizer.tokenize(text)
        vocab = self._vocab
        if not grow:
            return "".join([vocab.get(tok, _UNKNOWN) for tok in tokens])
        out = []
        for tok in tokens:
            code = vocab.get(tok)
            if code is None:
                n = len(vocab) + 1  # skip 0 (_UNKNOWN) and the surrogate block
                code = vocab[tok] = chr(n if n < 0xD800 else n + 0x800)
            out.append(code)
        return "".join(out)

    def add(self, id: Any, text: str) -> None:
        """Keep `text` under `id`: later queries are compared with it."""
        seq = self._encode(text, grow=True)
        index = len(self._ids)
        self._ids.append(id)
        self._seqs.append(seq)
        self._lens.append(len(seq))
        for code, count in Counter(seq).items():
            posting = self._postings.get(code)
            if posting is None:
                posting = self._postings[code] = (_Grow(), _Grow())
            posting[0].append(index)
            posting[1].append(count)

    def best_match(self, text: str, threshold: float) -> Match | None:
        """The kept item with the highest ROUGE-L F1 above `threshold` (earliest on ties), else None."""
        hits, scores = self._above(self._encode(text, grow=False), threshold)
        if not len(hits):
            return None
        best = int(np.argmax(scores))
        return Match(self._ids[int(hits[best])], float(scores[best]))

    def exceeds(self, text: str, threshold: float) -> bool:
        """True when some kept item scores above `threshold` against `text`."""
        return self.best_match(text, threshold) is not None

    def matches(self, text: str, threshold: float) -> list[Match]:
        """Every kept item above `threshold`, in the order they were added."""
        hits, scores = self._above(self._encode(text, grow=False), threshold)
        return [Match(self._ids[int(i)], float(s)) for i, s in zip(hits, scores, strict=True)]

    def contained(
        self, text: str, share: float, *, min_len: int = 1, max_len: int | None = None
    ) -> list[Match]:
        """Kept items found in `text` in order for at least `share` of their tokens (LCS / len(kept) >=
        share), among kept items of min_len..max_len tokens; `Match.score` is that share.

        Containment of a kept item *in* a text: what leakage asks of a test record, since a copy with
        a sentence added still contains all of it."""
        if not 0 < share <= 1:
            raise ValueError(f"containment share must be in (0, 1], got {share}")
        seq = self._encode(text, grow=False)
        m = len(seq)
        n_hi = int(m / share) + 1 if max_len is None else min(int(m / share) + 1, max_len)
        while n_hi > 0 and min(m, n_hi) / n_hi < share:  # no kept item longer than this can reach share
            n_hi -= 1
        n_lo = max(1, min_len)
        need = max(1, int(share * n_lo) - 1)
        while need / n_lo < share:
            need += 1
        hits, lcs = self._search(seq, n_lo, n_hi, need, lambda lcs, lens: lcs / lens >= share)
        shares = lcs / self._lens.view()[hits]
        return [Match(self._ids[int(i)], float(s)) for i, s in zip(hits, shares, strict=True)]

    def _above(self, seq: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= threshold < 1:
            raise ValueError(f"ROUGE-L threshold must be in [0, 1), got {threshold}")
        m = len(seq)
        if m == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        n_lo, n_hi, need = _window(m, threshold)
        hits, lcs = self._search(seq, n_lo, n_hi, need, lambda lcs, lens: _f1_array(lcs, m, lens) > threshold)
        return hits, _f1_array(lcs, m, self._lens.view()[hits])

    def _search(
        self,
        seq: str,
        n_lo: int,
        n_hi: int,
        need: int,
        accept: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item indexes, LCS) of kept items of n_lo..n_hi tokens that `accept(lcs, lens)`.

        `accept` must be monotone in the LCS, and no item in n_lo..n_hi may be accepted with an LCS
        below `need`: then the bounds below (upper bounds on the LCS) never drop an accepted item."""
        m, size = len(seq), len(self._ids)
        empty = np.empty(0, dtype=np.int64), np.empty(0)
        if m == 0 or size == 0 or n_lo > n_hi:
            return empty
        self.counters["pairs"] += size
        # Prefix filter: take the query's rarest tokens until the tokens left over (m - taken) are fewer
        # than the least LCS any kept length in the window needs. A kept text sharing none of the taken
        # tokens then has LCS <= m - taken < need, so only texts in the taken tokens' postings survive.
        counts = Counter(seq)
        postings = self._postings
        order = sorted(counts.items(), key=lambda kv: postings[kv[0]][0].size if kv[0] in postings else 0)
        taken, parts, index_parts, count_parts, query_counts = 0, [], [], [], []
        for code, count in order:
            if m - taken < need:
                break
            taken += count
            posting = postings.get(code)
            if posting is not None:
                index_parts.append(posting[0].view())
                count_parts.append(posting[1].view())
                query_counts.append(count)
                parts.append(posting[0].size)
        if not index_parts:
            self.counters["pruned_prefix"] += size
            return empty
        items = np.concatenate(index_parts)
        kept_counts = np.concatenate(count_parts)
        shared = np.minimum(kept_counts, np.repeat(np.asarray(query_counts, dtype=np.int32), parts))
        overlap = np.bincount(items, weights=shared, minlength=size)  # sum of min counts, taken tokens
        mass = np.bincount(items, weights=kept_counts, minlength=size)  # kept tokens among taken ones
        lens = self._lens.view()
        candidates = np.flatnonzero((mass > 0) & (lens >= n_lo) & (lens <= n_hi))
        self.counters["pruned_prefix_or_length"] += size - len(candidates)
        if not len(candidates):
            return empty
        # Bag-of-tokens bound: LCS <= shared count over taken tokens + min(untaken mass on each side).
        cand_lens = lens[candidates]
        bound = overlap[candidates] + np.minimum(m - taken, cand_lens - mass[candidates])
        alive = accept(bound, cand_lens)
        self.counters["pruned_bag"] += len(candidates) - int(alive.sum())
        candidates, cand_lens = candidates[alive], cand_lens[alive]
        if not len(candidates):
            return empty
        self.counters["lcs"] += len(candidates)
        choices = [self._seqs[i] for i in candidates]
        lcs = process.cdist([seq], choices, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
        hit = accept(lcs, cand_lens)
        return candidates[hit], lcs[hit]
