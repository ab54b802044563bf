"""Template text ("boilerplate") in records: learn which segments are frequent in a corpus and strip them.

Real records repeat long template statements (epidemiology questionnaires, unfilled vital-sign forms,
empty field labels), so similarity measured on whole records mostly measures the template. A text is
cut into segments at `，。；,;、` and newlines; a segment found in more than `share` of a corpus's
documents is boilerplate; the *core* of a text is what remains once boilerplate segments are dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from engine.atomic import write_bytes_atomic
from filters.base import FilterConfig
from filters.records import jsonl_texts, resolve

SEPARATORS = "，。；,;、\n\r"
_SPLIT_RE = re.compile(f"[{SEPARATORS}]+")
DEFAULT_SHARE = 0.005  # measured: 103/300 false near-duplicates on whole records, 8/300 on cores
DEFAULT_MIN_DOCS = 3  # a segment two documents share is as likely a copied pair as a template


def split_segments(text: str) -> list[str]:
    """Segments of a text, whitespace-stripped, empty ones dropped."""
    return [seg for seg in (part.strip() for part in _SPLIT_RE.split(text)) if seg]


class Boilerplate:
    """A set of boilerplate segments and the `core()` of a text without them."""

    def __init__(self, segments: Iterable[str] = ()):
        self.segments = frozenset(segments)

    @classmethod
    def learn(
        cls, texts: Iterable[str], *, share: float = DEFAULT_SHARE, min_docs: int = DEFAULT_MIN_DOCS
    ) -> Boilerplate:
        """Segments found in more than `share` of the texts (and in at least `min_docs` of them).

        `min_docs` keeps a small corpus from calling every shared segment boilerplate (0.5% of 50 texts
        is < 1), which would strip the content of near-duplicate pairs.
        """
        df: Counter[str] = Counter()
        n = 0
        for text in texts:
            n += 1
            df.update(set(split_segments(text)))
        limit = share * n
        return cls(seg for seg, count in df.items() if count > limit and count >= min_docs)

    @classmethod
    def load(cls, path: str | Path) -> Boilerplate:
        """One segment per line (blank lines ignored)."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls(line.strip() for line in lines if line.strip())

    def save(self, path: str | Path) -> None:
        write_bytes_atomic(path, "".join(seg + "\n" for seg in sorted(self.segments)).encode("utf-8"))

    def core(self, text: str) -> str:
        """The text without its boilerplate segments (remaining segments joined by newlines)."""
        if not self.segments:
            return text
        return "\n".join(seg for seg in split_segments(text) if seg not in self.segments)

    def __or__(self, other: Boilerplate) -> Boilerplate:
        return Boilerplate(self.segments | other.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def __contains__(self, segment: str) -> bool:
        return segment in self.segments


class BoilerplateOptions(FilterConfig):
    """Where a similarity filter learns boilerplate from (used when its `core` option is on)."""

    boilerplate_from: list[str] = Field(
        default_factory=list,
        description="JSONL corpora (relative to the spec's folder) whose segment frequencies define "
        "boilerplate, read on the filter's `fields`; added to the filter's own corpus (seed pool, test set)",
    )
    boilerplate_list: str | None = Field(
        default=None, description="text file of boilerplate segments, one per line (used as given)"
    )
    boilerplate_share: float = Field(
        default=DEFAULT_SHARE,
        gt=0,
        lt=1,
        description="a segment in more than this share of documents is boilerplate",
    )


def build_boilerplate(
    options: BoilerplateOptions, fields: list[str], *, base_dir: Any = None, corpus: Iterable[str] = ()
) -> Boilerplate:
    """Boilerplate learnt from `corpus` plus `options.boilerplate_from`, united with `boilerplate_list`."""

    def texts() -> Iterable[str]:
        yield from corpus
        for path in options.boilerplate_from:
            for _, text in jsonl_texts(resolve(path, base_dir), fields):
                yield text

    learnt = Boilerplate.learn(texts(), share=options.boilerplate_share)
    if options.boilerplate_list:
        learnt = learnt | Boilerplate.load(resolve(options.boilerplate_list, base_dir))
    return learnt
