"""Whole-file evaluation: a file against itself scores 1.0, perturbed copies score lower by the amounts
computed by hand, missing ids count as empty answers, and intervals are seeded."""

import copy
from pathlib import Path

import pytest

from engine.errors import SpecError
from evals.metrics import EvalConfig
from evals.report import evaluate, format_table
from evals.submission import load_answers, read_submission

FIXTURE = Path(__file__).parent / "data" / "eval_submission.jsonl"
FAST = EvalConfig(bootstrap=200)


@pytest.fixture
def records():
    # 4 records with 2, 3, 1 and 2 diseases and 3, 3, 2 and 4 reason points
    return read_submission(FIXTURE)


def _evaluate(predictions, gold, config=FAST):
    return evaluate(load_answers(predictions), load_answers(gold), config)


def test_file_against_itself_is_perfect(records):
    report = _evaluate(records, records)
    for group in ("diseases", "reason"):
        assert report[group] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert report["combined"] == 1.0
    assert report["intervals"]["diseases.f1"] == [1.0, 1.0]
    assert (report["n_records"], report["n_missing"], report["n_extra"]) == (4, 0, 0)


def _drop_last_disease(records, indices):
    perturbed = copy.deepcopy(records)
    for i in indices:
        perturbed[i]["diseases"] = perturbed[i]["diseases"][:-1]
    return perturbed


def test_deleting_one_disease_in_two_of_four_records_macro(records):
    report = _evaluate(_drop_last_disease(records, [0, 1]), records)
    # per-record recall 1/2, 2/3, 1, 1; per-record F1 2/3, 4/5, 1, 1
    assert report["diseases"]["precision"] == 1.0
    assert report["diseases"]["recall"] == pytest.approx((1 / 2 + 2 / 3 + 1 + 1) / 4)
    assert report["diseases"]["f1"] == pytest.approx((2 / 3 + 4 / 5 + 1 + 1) / 4)
    assert report["reason"]["f1"] == 1.0
    assert report["combined"] == pytest.approx(0.5 * 13 / 15 + 0.5 * 1.0)
    low, high = report["intervals"]["diseases.recall"]
    assert low <= report["diseases"]["recall"] <= high and low < 1.0


def test_deleting_one_disease_in_two_of_four_records_micro(records):
    report = _evaluate(_drop_last_disease(records, [0, 1]), records, EvalConfig(average="micro", bootstrap=0))
    # 6 of 8 gold diseases predicted, all 6 predictions right
    assert report["diseases"]["recall"] == pytest.approx(6 / 8)
    assert report["diseases"]["f1"] == pytest.approx(2 * 6 / (6 + 8))
    assert report["intervals"] == {}


def test_deleting_a_reason_point_lowers_reason_recall_only(records):
    perturbed = copy.deepcopy(records)
    perturbed[3]["reason"] = perturbed[3]["reason"][1:]  # 3 of its 4 points left
    report = _evaluate(perturbed, records)
    assert report["reason"]["recall"] == pytest.approx((1 + 1 + 1 + 3 / 4) / 4)
    assert report["reason"]["precision"] == 1.0
    assert report["diseases"]["f1"] == 1.0


def test_missing_ids_are_empty_answers_and_extra_ids_are_ignored(records):
    predictions = copy.deepcopy(records[:3]) + [{"id": 999, "diseases": ["发热"], "reason": ["发热"]}]
    report = _evaluate(predictions, records)
    assert (report["n_missing"], report["n_extra"]) == (1, 1)
    assert report["diseases"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert "scored empty: 1" in format_table(report)


def test_ids_join_across_int_and_string(records):
    as_strings = [dict(r, id=str(r["id"])) for r in records]
    assert _evaluate(as_strings, records)["diseases"]["f1"] == 1.0


def test_duplicate_ids_cannot_be_joined(records):
    with pytest.raises(SpecError, match="predictions: id '101' appears more than once"):
        _evaluate(records + records[:1], records)


def test_bootstrap_is_seeded(records):
    perturbed = _drop_last_disease(records, [0, 1])
    first = _evaluate(perturbed, records, EvalConfig(bootstrap=300, seed=3))["intervals"]
    again = _evaluate(perturbed, records, EvalConfig(bootstrap=300, seed=3))["intervals"]
    other = _evaluate(perturbed, records, EvalConfig(bootstrap=300, seed=4))["intervals"]
    assert first == again
    assert first != other


def test_without_gold_reports_grounding_and_stats(records):
    report = evaluate(load_answers(records))
    assert report["diseases"] is None and report["reason"] is None and report["combined"] is None
    assert report["intervals"] == {}
    assert report["stats"]["reasons_per_answer"] == 3.0  # (3 + 3 + 2 + 4) / 4
    assert report["stats"]["diseases_per_answer"] == 2.0  # (2 + 3 + 1 + 2) / 4
    assert report["grounding"]["n_points"] == 12
    assert 0 < report["grounding"]["mean"] < 1


def test_combined_weights_are_configurable(records):
    config = EvalConfig(weights={"diseases.recall": 3, "grounding.mean": 1}, bootstrap=0)
    report = _evaluate(_drop_last_disease(records, [0]), records, config)
    expected = (3 * report["diseases"]["recall"] + report["grounding"]["mean"]) / 4
    assert report["combined"] == pytest.approx(expected)
