"""Two diagnosis answers item by item, with the evaluation's own matching: diseases as sets of
normalised names, reason points matched one-to-one at character ROUGE-L F1 (evals.metrics). `engine
view` uses it to compare runs; the comparer contract is described in viewer/compare.py.
"""

from __future__ import annotations

from typing import Any

from evals.metrics import _DISEASE_SIMILARITY, EvalConfig, lcs_f1, match_one_to_one
from evals.normalize import as_items, normalize_disease, normalize_point, split_diseases, split_reason

DISEASES, REASON = "diseases", "reason"
Matching = tuple[list[str], list[str], list[tuple[int, int, float]]]


class DiagnosisComparer:
    name = "diagnosis"
    fields = (DISEASES, REASON)
    stats = ("mean_reasons", "mean_reason_chars", "mean_diseases")  # the first user's per-version table

    def __init__(self, config: EvalConfig | None = None):
        self.config = config or EvalConfig()

    def handles(self, record: dict[str, Any]) -> bool:
        return DISEASES in record or REASON in record

    def match(self, field: str, a: Any, b: Any) -> Matching | None:
        """(items of a, items of b, one-to-one pairs (i, j, score)); None for a field it does not know
        or a value that is neither a string nor a list of strings."""
        cfg = self.config
        if field == DISEASES:
            split, similarity, threshold = (
                split_diseases,
                _DISEASE_SIMILARITY[cfg.disease_match],
                cfg.disease_threshold,
            )

            def normal(name: str) -> str:
                return normalize_disease(name, drop_qualifiers=cfg.drop_qualifiers)
        elif field == REASON:
            split, similarity, threshold, normal = split_reason, lcs_f1, cfg.reason_threshold, normalize_point
        else:
            return None
        try:
            left, right = as_items(a, split, field=field), as_items(b, split, field=field)
        except ValueError:
            return None
        norm_a, norm_b = [normal(x) for x in left], [normal(x) for x in right]
        if norm_a == norm_b:  # the common case between close versions: no scoring needed
            return left, right, [(i, i, 1.0) for i in range(len(left))]
        return left, right, match_one_to_one(norm_a, norm_b, similarity, threshold, cfg.matcher)
