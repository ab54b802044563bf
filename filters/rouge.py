"""ROUGE-L near-duplicate filter (kind "rouge_dedupe"): the Self-Instruct / Alpaca rule, exact and fast.

A record is dropped when its ROUGE-L F1 against any item already kept (the seed pool, then every record
kept so far, in commit order) exceeds `threshold`. Scores equal rouge-score's with `CJKTokenizer`; the
search is `RougeIndex` (filters.rouge_index). With `core = true` the comparison is on boilerplate-free
cores, and stats() counts the decisions that changed.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from filters.base import Filter, FilterResult, register
from filters.boilerplate import Boilerplate, BoilerplateOptions, build_boilerplate
from filters.records import field_text, jsonl_texts, resolve
from filters.rouge_index import CJKTokenizer, Match, RougeIndex, f1_from_lcs, rouge_l

__all__ = [
    "CJKTokenizer",
    "Match",
    "RougeDedupe",
    "RougeDedupeConfig",
    "RougeIndex",
    "f1_from_lcs",
    "rouge_l",
]


class RougeDedupeConfig(BoilerplateOptions):
    fields: list[str] = Field(default=["feature_content"], min_length=1, description="record fields compared")
    threshold: float = Field(default=0.7, ge=0, lt=1, description="drop when ROUGE-L F1 exceeds this")
    seed: str | None = Field(default=None, description="JSONL seed pool (relative to the spec's folder)")
    seed_fields: list[str] | None = Field(
        default=None, description="fields of seed records (default: fields)"
    )
    core: bool = Field(default=False, description="compare boilerplate-free cores (off: as the paper did)")
    count_core_changes: bool = Field(
        default=True, description="with core: also decide on whole texts, to count the decisions core changed"
    )


@register
class RougeDedupe(Filter):
    """Self-Instruct's rule: drop a record whose ROUGE-L F1 against any kept one (seed pool included)
    exceeds the threshold; records are kept in the order the filter sees them (commit order)."""

    name = "rouge_dedupe"
    Config = RougeDedupeConfig

    def __init__(
        self,
        config: RougeDedupeConfig | None = None,
        *,
        base_dir: Any = None,
        boilerplate: Boilerplate | None = None,
    ):
        super().__init__(config, base_dir=base_dir)
        cfg: RougeDedupeConfig = self.config
        seeds = (
            list(jsonl_texts(resolve(cfg.seed, base_dir), cfg.seed_fields or cfg.fields)) if cfg.seed else []
        )
        if boilerplate is None and cfg.core:
            if not (seeds or cfg.boilerplate_from or cfg.boilerplate_list):
                raise ValueError(
                    "rouge_dedupe: core = true needs a corpus to learn boilerplate from: "
                    "set seed, boilerplate_from or boilerplate_list"
                )
            boilerplate = build_boilerplate(cfg, cfg.fields, base_dir=base_dir, corpus=(t for _, t in seeds))
        self.boilerplate = boilerplate if cfg.core and boilerplate is not None else Boilerplate()
        self.index = RougeIndex()
        self._whole = RougeIndex() if cfg.core and cfg.count_core_changes else None
        self._seen = self._dropped = self._core_changed = 0
        for seed_id, text in seeds:
            self._keep(("seed", seed_id), text)
        self._seed_count = len(seeds)

    def _compared(self, text: str) -> str:
        core = self.boilerplate.core(text) if self.config.core else text
        return core if core.strip() else text  # an all-template text is compared whole

    def _keep(self, key: tuple[str, Any], text: str) -> None:
        self.index.add(key, self._compared(text))
        if self._whole is not None:
            self._whole.add(key, text)

    def decide(self, record: dict[str, Any]) -> Match | None:
        """The best kept match above the threshold (the record is dropped), or None (it is now kept).

        `Match.id` is ("seed", id) for a seed-pool item, ("kept", id) for an earlier record."""
        cfg: RougeDedupeConfig = self.config
        self._seen += 1
        text = field_text(record, cfg.fields, where="rouge_dedupe filter")
        match = self.index.best_match(self._compared(text), cfg.threshold)
        if self._whole is not None:
            self._core_changed += (match is None) != (not self._whole.exceeds(text, cfg.threshold))
        if match is None:
            self._keep(("kept", record.get("id", f"#{self._seen}")), text)
        else:
            self._dropped += 1
        return match

    def __call__(self, record: dict[str, Any]) -> FilterResult:
        match = self.decide(record)
        if match is None:
            return True
        origin, dup_id = match.id
        who = "seed id" if origin == "seed" else "id"
        return (
            False,
            f"near-duplicate: rouge_l {match.score:.4f} > {self.config.threshold} vs {who} {dup_id!r}",
        )

    def stats(self) -> dict[str, Any]:
        out = {
            "seen": self._seen,
            "dropped": self._dropped,
            "seed": self._seed_count,
            "index_size": len(self.index),
            "pairs_scored_with_lcs": self.index.counters["lcs"],
            "pairs_pruned": self.index.counters["pairs"] - self.index.counters["lcs"],
        }
        if self.config.core:
            out["boilerplate_segments"] = len(self.boilerplate)
            if self._whole is not None:
                out["core_changed"] = self._core_changed
        return out
