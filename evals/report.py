"""Evaluate answers against gold: join by id, aggregate per-record scores, bootstrap intervals over
records, and print the result as a table or one JSON object."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from engine.errors import SpecError
from evals.metrics import METRIC_NAMES, EvalConfig, RecordScore, record_prf, score_record
from evals.submission import Answer

Columns = dict[str, tuple[np.ndarray, np.ndarray]]
_BOOTSTRAP_CHUNK = 200  # resamples drawn at once: bounds memory at 200 x records weights


def _unique_index(answers: list[Answer], label: str) -> dict[str, Answer]:
    repeated = [key for key, count in Counter(a.key for a in answers).items() if count > 1]
    if repeated:
        raise SpecError(
            f"{label}: id {repeated[0]!r} appears more than once; ids must be unique to join with gold"
        )
    return {a.key: a for a in answers}


def metric_columns(scores: list[RecordScore], config: EvalConfig, *, with_gold: bool) -> Columns:
    """Every metric as (numerator, denominator) per record: its value is sum(num) / sum(den), which
    makes macro means, micro ratios and point-level means resample the same way."""
    ones = np.ones(len(scores))
    points = np.array([len(s.grounding) for s in scores], dtype=float)
    columns: Columns = {
        "grounding.mean": (np.array([sum(s.grounding) for s in scores], dtype=float), points),
        "grounding.grounded_share": (
            np.array(
                [sum(g >= config.grounding_threshold for g in s.grounding) for s in scores], dtype=float
            ),
            points,
        ),
        "stats.reasons_per_answer": (np.array([s.n_reasons for s in scores], dtype=float), ones),
        "stats.reason_chars_per_answer": (np.array([s.reason_chars for s in scores], dtype=float), ones),
        "stats.diseases_per_answer": (np.array([s.n_diseases for s in scores], dtype=float), ones),
        "stats.input_chars": (
            np.array([s.input_chars or 0 for s in scores], dtype=float),
            np.array([s.input_chars is not None for s in scores], dtype=float),
        ),
    }
    if not with_gold:
        return columns
    for prefix, part in (("diseases", "disease"), ("reason", "reason")):
        counts = np.array(
            [[getattr(s, f"{part}_{k}") for k in ("tp", "pred", "gold")] for s in scores], dtype=float
        ).reshape(-1, 3)  # (records, 3) even when there are no records
        tp, n_pred, n_gold = counts.T
        if config.average == "micro":
            prf = {"precision": (tp, n_pred), "recall": (tp, n_gold), "f1": (2 * tp, n_pred + n_gold)}
        else:
            per_record = np.array([record_prf(*map(int, row)) for row in counts]).reshape(-1, 3)
            prf = {name: (per_record[:, k], ones) for k, name in enumerate(("precision", "recall", "f1"))}
        columns |= {f"{prefix}.{name}": pair for name, pair in prf.items()}
    return columns


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def combine(values: dict[str, Any], weights: dict[str, float]) -> Any:
    """Weighted mean of the named metrics (floats or arrays of resampled values)."""
    total = sum(weights.values())
    return sum(weight * values[name] for name, weight in weights.items()) / total


def bootstrap_intervals(columns: Columns, config: EvalConfig) -> dict[str, list[float]]:
    """Percentile intervals over records resampled with replacement (seeded); every metric and the
    combined score see the same resamples, so their intervals are paired."""
    n = len(next(iter(columns.values()))[0])
    if config.bootstrap == 0 or n == 0:
        return {}
    rng = np.random.default_rng(config.seed)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    for start in range(0, config.bootstrap, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, config.bootstrap - start)
        weights = rng.multinomial(n, np.full(n, 1 / n), size=size).astype(float)
        for name, (num, den) in columns.items():
            samples[name].append(_ratio(weights @ num, weights @ den))
    resampled = {name: np.concatenate(parts) for name, parts in samples.items()}
    if set(config.weights) <= set(resampled):
        resampled["combined"] = combine(resampled, config.weights)
    tail = (1 - config.confidence) / 2 * 100
    return {
        name: [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])]
        for name, values in resampled.items()
        if not np.all(np.isnan(values))
    }


def evaluate(
    predictions: list[Answer],
    gold: list[Answer] | None = None,
    config: EvalConfig | None = None,
    *,
    labels: tuple[str, str] = ("predictions", "gold"),
) -> dict[str, Any]:
    """The report as a dict. With gold, records are gold's ids: an id missing from the predictions
    is an empty answer (`n_missing`), a predicted id absent from gold is ignored (`n_extra`)."""
    config = config or EvalConfig()
    if gold is None:
        pairs = [(p, None) for p in predictions]
        n_missing = n_extra = 0
    else:
        by_key = _unique_index(predictions, labels[0])
        gold_keys = _unique_index(gold, labels[1])
        pairs = [(by_key.get(g.key), g) for g in gold]
        n_missing = sum(g.key not in by_key for g in gold)
        n_extra = sum(key not in gold_keys for key in by_key)
    scores = [score_record(p, g, config) for p, g in pairs]
    columns = metric_columns(scores, config, with_gold=gold is not None)
    ratios = {name: float(_ratio(num.sum(), den.sum())) for name, (num, den) in columns.items()}
    values = {name: None if np.isnan(v) else v for name, v in ratios.items()}
    known = all(values.get(name) is not None for name in config.weights)

    def group(prefix: str, names: tuple[str, ...]) -> dict[str, float | None] | None:
        if f"{prefix}.{names[0]}" not in values:
            return None
        return {name: values[f"{prefix}.{name}"] for name in names}

    return {
        "n_records": len(pairs),
        "n_predictions": len(predictions),
        "n_missing": n_missing,
        "n_extra": n_extra,
        "has_gold": gold is not None,
        "diseases": group("diseases", ("precision", "recall", "f1")),
        "reason": group("reason", ("precision", "recall", "f1")),
        "grounding": group("grounding", ("mean", "grounded_share"))
        | {"n_points": int(columns["grounding.mean"][1].sum())},
        "stats": {name.split(".", 1)[1]: values[name] for name in METRIC_NAMES if name.startswith("stats.")},
        "combined": combine(values, config.weights) if known else None,
        "intervals": bootstrap_intervals(columns, config) if gold is not None else {},
        "config": config.model_dump(),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table, one metric a row."""
    confidence = round(report["config"]["confidence"] * 100)
    rows = [("metric", "value", f"{confidence}% interval" if report["intervals"] else "")]
    for group in ("diseases", "reason", "grounding", "stats"):
        for name, value in (report[group] or {}).items():
            rows.append((f"{group}.{name}", value, report["intervals"].get(f"{group}.{name}")))
    rows.append(("combined", report["combined"], report["intervals"].get("combined")))

    def cell(value: Any, name: str) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, int):
            return str(value)
        return f"{value:.1f}" if name.startswith("stats.") else f"{value:.4f}"

    lines = [f"{rows[0][0]:<32}{rows[0][1]:>10}  {rows[0][2]}"]
    for name, value, interval in rows[1:]:
        span = f"[{cell(interval[0], name)}, {cell(interval[1], name)}]" if interval else ""
        lines.append(f"{name:<32}{cell(value, name):>10}  {span}".rstrip())
    lines.append(
        f"records: {report['n_records']}"
        + (f" (missing from predictions, scored empty: {report['n_missing']}; "
           f"predicted ids not in gold, ignored: {report['n_extra']})" if report["has_gold"] else "")
    )  # fmt: skip
    if not report["has_gold"]:
        lines.append("no gold: diseases, reason and combined need --gold")
    return "\n".join(lines)
