"""Test-set leakage: drop every record that overlaps a declared test set (kind "leakage").

Checks, first hit wins, each reported per test file in stats():
- exact copy: the normalised text equals a test record's (NFKC folds full-width forms, lower-case,
  whitespace and punctuation removed: re-spaced and re-punctuated copies are exact copies);
- ngram overlap: at least `ngram_share` of the record's character n-grams occur in a test file;
- contains test record: a test record's tokens are found, in order, in the record for at least
  `containment` of their number (a copy with a sentence inserted still contains all of its source);
- rouge_l (optional): ROUGE-L F1 against a test record above `rouge_threshold`.
With `core` (default), the last three look at the boilerplate-free core (the test side's, and the
record's for n-grams), so distinct records that merely share template text stay. Text is compared in
normalised form; n-grams are over its characters, tokens are CJKTokenizer's (one per CJK character).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

import numpy as np
from pydantic import Field

from filters.base import Filter, FilterResult, register
from filters.boilerplate import Boilerplate, BoilerplateOptions, build_boilerplate
from filters.records import field_text, jsonl_texts, resolve
from filters.rouge_index import CJKTokenizer, RougeIndex

_DROP_CATEGORIES = ("P", "Z", "C")  # punctuation, separators (spaces), controls (newlines, tabs)


def normalize_text(text: str) -> str:
    """NFKC, lower-case, without whitespace and punctuation: the form leakage compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in _DROP_CATEGORIES)


def ngram_hashes(normalized: str, n: int) -> np.ndarray:
    """In-process hashes of every character n-gram (positions, not distinct), as int64."""
    count = len(normalized) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    return np.fromiter((hash(normalized[i : i + n]) for i in range(count)), dtype=np.int64, count=count)


class _NgramTable:
    """Sorted n-gram hashes of one test file, each with the index of a test record that has it."""

    def __init__(self, texts: list[str], n: int):
        parts = [ngram_hashes(t, n) for t in texts]
        owners = np.repeat(np.arange(len(texts)), [len(p) for p in parts])
        hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        self.hashes, first = np.unique(hashes, return_index=True)
        self.owners = owners[first]

    def share(self, query: np.ndarray) -> tuple[float, int]:
        """(share of query n-grams found here, index of the test record holding most of them)."""
        if not len(query) or not len(self.hashes):
            return 0.0, -1
        pos = np.minimum(np.searchsorted(self.hashes, query), len(self.hashes) - 1)
        found = self.hashes[pos] == query
        hits = int(found.sum())
        if not hits:
            return 0.0, -1
        return hits / len(query), int(np.bincount(self.owners[pos[found]]).argmax())


class LeakageConfig(BoilerplateOptions):
    test: list[str] = Field(min_length=1, description="test-set JSONL files, relative to the spec's folder")
    fields: list[str] = Field(default=["feature_content"], min_length=1, description="record fields compared")
    test_fields: list[str] | None = Field(default=None, description="test records' fields (default: fields)")
    ngram: int = Field(default=13, ge=2, description="n of the character n-grams")
    ngram_share: float = Field(
        default=0.5, gt=0, le=1, description="drop when this share of the record's n-grams is in a test file"
    )
    containment: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="drop when this share of a test record's tokens is in the record (0: off)",
    )
    containment_min_tokens: int = Field(
        default=10, ge=1, description="test records with fewer (core) tokens are not checked for containment"
    )
    containment_max_ratio: float = Field(
        default=3.0, ge=1, description="containment only for records at most this many times a test record"
    )
    core: bool = Field(default=True, description="compare boilerplate-free cores (learnt from the test set)")
    rouge_threshold: float | None = Field(
        default=None, ge=0, lt=1, description="also drop when ROUGE-L F1 against a test record exceeds this"
    )


@register
class LeakageFilter(Filter):
    name = "leakage"
    Config = LeakageConfig

    def __init__(self, config: LeakageConfig | None = None, *, base_dir: Any = None):
        super().__init__(config, base_dir=base_dir)
        cfg: LeakageConfig = self.config
        fields = cfg.test_fields or cfg.fields
        loaded = [(path, list(jsonl_texts(resolve(path, base_dir), fields))) for path in cfg.test]
        corpus = [text for _, rows in loaded for _, text in rows]
        self.boilerplate = (
            build_boilerplate(cfg, fields, base_dir=base_dir, corpus=corpus) if cfg.core else Boilerplate()
        )
        self._tokenizer = CJKTokenizer()
        self._names = [str(path) for path, _ in loaded]
        self._ids = [[rid for rid, _ in rows] for _, rows in loaded]
        self._exact: dict[str, tuple[int, Any]] = {}
        self._whole_tables: list[_NgramTable] = []  # whole texts: exact check, and stats of what core changed
        self._core_tables: list[_NgramTable] = []
        self._index = RougeIndex(self._tokenizer)  # test records' informative text, for containment / rouge
        for file_no, (_, rows) in enumerate(loaded):
            whole = [normalize_text(text) for _, text in rows]
            for rid, norm in zip(self._ids[file_no], whole, strict=True):
                self._exact.setdefault(norm, (file_no, rid))
            informative = [self._informative(text) for _, text in rows] if cfg.core else whole
            self._whole_tables.append(_NgramTable(whole, cfg.ngram))
            self._core_tables.append(
                _NgramTable(informative, cfg.ngram) if cfg.core else self._whole_tables[-1]
            )
            for rid, text in zip(self._ids[file_no], informative, strict=True):
                if text:  # an all-template test record has nothing to find beyond an exact copy
                    self._index.add((file_no, rid), text)
        self._removed = {name: Counter() for name in self._names}
        self._checked = self._core_changed = 0

    def _informative(self, text: str) -> str:
        return normalize_text(self.boilerplate.core(text))

    def _ngram_hit(self, normalized: str, tables: list[_NgramTable]) -> tuple[float, int, int] | None:
        """(share, file number, test record index) of the file with the largest share >= ngram_share."""
        query = ngram_hashes(normalized, self.config.ngram)
        best = None
        for file_no, table in enumerate(tables):
            share, owner = table.share(query)
            if share >= self.config.ngram_share and (best is None or share > best[0]):
                best = (share, file_no, owner)
        return best

    def __call__(self, record: dict[str, Any]) -> FilterResult:
        cfg: LeakageConfig = self.config
        text = field_text(record, cfg.fields, where="leakage filter")
        self._checked += 1
        whole = normalize_text(text)
        exact = self._exact.get(whole)
        if exact is not None:
            return self._drop(exact[0], "exact copy", f"test id {exact[1]!r}")
        informative = self._informative(text) if cfg.core else whole
        hit = self._ngram_hit(informative, self._core_tables)
        if cfg.core:
            self._core_changed += (hit is None) != (self._ngram_hit(whole, self._whole_tables) is None)
        if hit is not None:
            share, file_no, owner = hit
            closest = self._ids[file_no][owner]
            detail = f"{share:.2f} of {cfg.ngram}-grams in the test file (closest id {closest!r})"
            return self._drop(file_no, "ngram overlap", detail)
        if cfg.containment > 0:
            size = len(self._tokenizer.tokenize(informative))
            min_len = max(cfg.containment_min_tokens, int(np.ceil(size / cfg.containment_max_ratio)))
            found = self._index.contained(whole, cfg.containment, min_len=min_len)
            if found:
                best = max(found, key=lambda m: m.score)
                file_no, test_id = best.id
                return self._drop(file_no, "contains test record", f"{best.score:.2f} of test id {test_id!r}")
        if cfg.rouge_threshold is not None and informative:
            match = self._index.best_match(informative, cfg.rouge_threshold)
            if match is not None:
                file_no, test_id = match.id
                return self._drop(file_no, "rouge_l", f"{match.score:.4f} vs test id {test_id!r}")
        return True

    def _drop(self, file_no: int, check: str, detail: str) -> tuple[bool, str]:
        name = self._names[file_no]
        self._removed[name][check] += 1
        return False, f"{check} in {name}: {detail}"

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checked": self._checked,
            "removed": {name: dict(counts) for name, counts in self._removed.items()},
        }
        if self.config.core:
            out["core_changed"] = self._core_changed  # n-gram decisions that differ from whole-text ones
            out["boilerplate_segments"] = len(self.boilerplate)
        return out
