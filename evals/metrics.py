"""Per-record scores of a diagnosis answer: diseases and reason points matched one-to-one against gold,
grounding of reason points in the patient record, and answer size. Aggregation lives in report.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rapidfuzz import fuzz
from rapidfuzz.distance import LCSseq

from evals.normalize import canonical, normalize_disease, normalize_point
from evals.submission import Answer

# Every name a weight may refer to; report.py computes each of them.
METRIC_NAMES = (
    "diseases.precision", "diseases.recall", "diseases.f1",
    "reason.precision", "reason.recall", "reason.f1",
    "grounding.mean", "grounding.grounded_share",
    "stats.reasons_per_answer", "stats.reason_chars_per_answer",
    "stats.diseases_per_answer", "stats.input_chars",
)  # fmt: skip


class EvalConfig(BaseModel):
    """Every knob of the evaluation; the CLI flags and docs/eval.md are generated from / follow these."""

    model_config = ConfigDict(extra="forbid")

    drop_qualifiers: bool = Field(True, description="compare diseases without parenthetical qualifiers")
    disease_match: Literal["exact", "rouge_l", "ratio", "partial_ratio"] = Field(
        "exact",
        description="disease similarity: exact after normalisation, or a fuzzy score over a threshold",
    )
    disease_threshold: float = Field(0.6, ge=0, le=1, description="fuzzy disease match threshold")
    reason_threshold: float = Field(
        0.5, ge=0, le=1, description="reason points match at character ROUGE-L F1 >= this"
    )
    matcher: Literal["greedy", "hungarian"] = Field(
        "greedy", description="one-to-one matching: best-first or Hungarian"
    )
    grounding_threshold: float = Field(
        0.8, ge=0, le=1, description="a point is grounded at LCS/length >= this"
    )
    average: Literal["macro", "micro"] = Field(
        "macro", description="macro: mean of per-record P/R/F1; micro: from counts summed over records"
    )
    weights: dict[str, float] = Field(
        {"diseases.f1": 0.5, "reason.f1": 0.5}, description="combined score = weighted mean of these metrics"
    )
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples over records (0: no intervals)")
    confidence: float = Field(0.95, gt=0, lt=1, description="bootstrap interval coverage")
    seed: int = Field(0, description="bootstrap seed")

    @field_validator("weights")
    @classmethod
    def _known_metrics(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r} in weights; known: {', '.join(METRIC_NAMES)}")
        if sum(weights.values()) <= 0:
            raise ValueError("weights must sum to more than 0")
        return weights


def lcs_f1(prediction: str, reference: str) -> float:
    """Character ROUGE-L F1, with rouge-score's arithmetic (2PR/(P+R)) so threshold decisions agree."""
    lcs = LCSseq.similarity(prediction, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


_DISEASE_SIMILARITY: dict[str, Callable[[str, str], float]] = {
    "exact": lambda a, b: float(a == b),
    "rouge_l": lcs_f1,
    "ratio": lambda a, b: fuzz.ratio(a, b) / 100,
    "partial_ratio": lambda a, b: fuzz.partial_ratio(a, b) / 100,
}


def match_one_to_one(
    predictions: list[str],
    references: list[str],
    similarity: Callable[[str, str], float],
    threshold: float,
    method: Literal["greedy", "hungarian"] = "greedy",
) -> list[tuple[int, int, float]]:
    """(prediction index, reference index, score) pairs, each item used at most once, with
    score >= threshold and score > 0 (a pair with nothing in common never matches).

    greedy takes the best remaining pair first (ties by position); hungarian maximises the summed
    score of the pairs that pass the threshold.
    """
    if not predictions or not references:
        return []
    scores = np.array([[similarity(p, r) for r in references] for p in predictions])
    passing = np.where(scores >= threshold, scores, 0.0)
    if method == "hungarian":
        from scipy.optimize import linear_sum_assignment  # only Hungarian matching needs scipy

        rows, cols = linear_sum_assignment(passing, maximize=True)
        return [
            (int(i), int(j), float(passing[i, j]))
            for i, j in zip(rows, cols, strict=True)
            if passing[i, j] > 0
        ]
    order = sorted(np.ndindex(scores.shape), key=lambda ij: (-passing[ij], ij))
    used_p, used_r, pairs = set(), set(), []
    for i, j in order:
        if passing[i, j] == 0:
            break
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            pairs.append((i, j, float(passing[i, j])))
    return pairs


def grounding(point: str, record_text: str) -> float:
    """Share of a reason point's characters found, in order, in the patient record (LCS / length)."""
    return _copied_share(normalize_point(point), canonical(record_text))


def _copied_share(point: str, record_text: str) -> float:
    return LCSseq.similarity(point, record_text) / len(point) if point else 0.0


@dataclass
class RecordScore:
    """The counts one record contributes; report.py sums or averages them over records."""

    disease_tp: int = 0
    disease_pred: int = 0
    disease_gold: int = 0
    reason_tp: int = 0
    reason_pred: int = 0
    reason_gold: int = 0
    grounding: list[float] = field(default_factory=list)
    n_reasons: int = 0
    reason_chars: int = 0
    n_diseases: int = 0
    input_chars: int | None = None


def _unique(names: list[str]) -> list[str]:
    return [name for name in dict.fromkeys(names) if name]


def score_record(prediction: Answer | None, gold: Answer | None, config: EvalConfig) -> RecordScore:
    """Scores of one answer; a missing prediction is an empty answer, a missing gold skips P/R/F1."""
    prediction = prediction or Answer(gold.id if gold else None, [], [])
    record_text = prediction.feature_content
    if record_text is None and gold is not None:
        record_text = gold.feature_content
    score = RecordScore(
        n_reasons=len(prediction.reasons),
        reason_chars=sum(len(point) for point in prediction.reasons),
        n_diseases=len(prediction.diseases),
    )
    if record_text is not None:
        score.input_chars = len(record_text)
        record_form = canonical(record_text)  # once per record, not once per point
        score.grounding = [_copied_share(normalize_point(p), record_form) for p in prediction.reasons]
    if gold is None:
        return score
    pred_d = _unique(
        [normalize_disease(d, drop_qualifiers=config.drop_qualifiers) for d in prediction.diseases]
    )
    gold_d = _unique([normalize_disease(d, drop_qualifiers=config.drop_qualifiers) for d in gold.diseases])
    similarity = _DISEASE_SIMILARITY[config.disease_match]
    matched = match_one_to_one(pred_d, gold_d, similarity, config.disease_threshold, config.matcher)
    score.disease_tp, score.disease_pred, score.disease_gold = len(matched), len(pred_d), len(gold_d)
    pred_r = [p for p in map(normalize_point, prediction.reasons) if p]
    gold_r = [p for p in map(normalize_point, gold.reasons) if p]
    matched = match_one_to_one(pred_r, gold_r, lcs_f1, config.reason_threshold, config.matcher)
    score.reason_tp, score.reason_pred, score.reason_gold = len(matched), len(pred_r), len(gold_r)
    return score


def record_prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """One record's precision, recall, F1. Both sides empty is a perfect answer; one side empty scores 0."""
    if n_pred == 0 and n_gold == 0:
        return 1.0, 1.0, 1.0
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
