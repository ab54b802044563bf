"""Per-record metrics with hand-computed values: character ROUGE-L, one-to-one matching, disease and
reason precision/recall, grounding in the patient record."""

import pytest
from rouge_score.rouge_scorer import RougeScorer

from evals.metrics import EvalConfig, grounding, lcs_f1, match_one_to_one, record_prf, score_record
from evals.submission import Answer, load_answers


class _Characters:
    def tokenize(self, text):
        return list(text)


def test_lcs_f1_by_hand():
    # LCS("高血压", "原发性高血压") = 3: P = 3/3, R = 3/6, F1 = 2 * 1 * 0.5 / 1.5
    assert lcs_f1("高血压", "原发性高血压") == pytest.approx(2 / 3)
    assert lcs_f1("发热", "咳嗽") == 0.0
    assert lcs_f1("咳嗽咳痰", "咳嗽咳痰") == 1.0


def test_lcs_f1_equals_rouge_score_on_characters_bit_for_bit():
    scorer = RougeScorer(["rougeL"], tokenizer=_Characters())
    pairs = [
        ("体温38.5℃，伴寒战", "患者发热，体温38.5℃。"),
        ("血压142/78mmHg", "体格检查中血压142/78mmHg，收缩压≥140mmHg"),
        ("无咳嗽咳痰", "无咳嗽、咳痰、畏寒"),
    ]
    for prediction, reference in pairs:
        assert lcs_f1(prediction, reference) == scorer.score(reference, prediction)["rougeL"].fmeasure


def test_greedy_and_hungarian_differ_where_best_first_blocks():
    table = {("a", "x"): 0.9, ("a", "y"): 0.8, ("b", "x"): 0.7, ("b", "y"): 0.1}
    similarity = lambda p, r: table[(p, r)]  # noqa: E731
    assert match_one_to_one(["a", "b"], ["x", "y"], similarity, 0.5, "greedy") == [(0, 0, 0.9)]
    hungarian = match_one_to_one(["a", "b"], ["x", "y"], similarity, 0.5, "hungarian")
    assert sorted(hungarian) == [(0, 1, 0.8), (1, 0, 0.7)]


def test_matching_is_one_to_one_and_never_pairs_nothing_in_common():
    same = lambda p, r: float(p == r)  # noqa: E731
    assert match_one_to_one(["发热", "发热"], ["发热"], same, 0.5) == [(0, 0, 1.0)]
    assert match_one_to_one(["发热"], ["咳嗽"], same, 0.0) == []
    assert match_one_to_one([], ["咳嗽"], same, 0.5) == []


def test_record_prf_conventions():
    assert record_prf(1, 3, 2) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert record_prf(0, 0, 0) == (1.0, 1.0, 1.0)  # nothing expected, nothing said
    assert record_prf(0, 0, 2) == (0.0, 0.0, 0.0)  # empty answer
    assert record_prf(0, 2, 0) == (0.0, 0.0, 0.0)


GOLD = Answer(1, ["高血压", "2型糖尿病"], ["血压150/95mmHg", "空腹血糖9.8mmol/L"])
PRED = Answer(1, ["1. 原发性高血压（1级）", "2型糖尿病", "高脂血症"], ["血压150/95mmHg", "患者无发热"])


def test_disease_exact_match_after_normalisation():
    score = score_record(PRED, GOLD, EvalConfig())
    # only 2型糖尿病 matches exactly: P = 1/3, R = 1/2
    assert (score.disease_tp, score.disease_pred, score.disease_gold) == (1, 3, 2)


def test_disease_fuzzy_match_lets_qualified_name_meet_gold():
    score = score_record(PRED, GOLD, EvalConfig(disease_match="rouge_l", disease_threshold=0.6))
    # 原发性高血压 vs 高血压: F1 = 2/3 >= 0.6; 高脂血症 vs 高血压: LCS 2, F1 = 4/7 < 0.6
    assert (score.disease_tp, score.disease_pred, score.disease_gold) == (2, 3, 2)
    kept = score_record(
        PRED, GOLD, EvalConfig(disease_match="rouge_l", disease_threshold=0.6, drop_qualifiers=False)
    )
    assert kept.disease_tp == 1  # 原发性高血压(1级) vs 高血压: 6/13 < 0.6
    partial = score_record(PRED, GOLD, EvalConfig(disease_match="partial_ratio", disease_threshold=0.9))
    assert partial.disease_tp == 2  # 高血压 is a substring: partial ratio 1.0


def test_duplicate_predicted_diseases_count_once():
    score = score_record(Answer(1, ["发热", "发热（待查）"], []), Answer(1, ["发热"], []), EvalConfig())
    assert (score.disease_tp, score.disease_pred) == (1, 1)


def test_reason_points_match_at_threshold():
    score = score_record(PRED, GOLD, EvalConfig())
    # 血压150/95mmhg matches itself; 患者无发热 shares nothing with 空腹血糖9.8mmol/l
    assert (score.reason_tp, score.reason_pred, score.reason_gold) == (1, 2, 2)
    near = Answer(1, [], ["体格检查血压150/95mmHg"])  # LCS 12, lengths 16 and 12: F1 = 24/28 = 0.857
    assert score_record(near, GOLD, EvalConfig(reason_threshold=0.85)).reason_tp == 1
    assert score_record(near, GOLD, EvalConfig(reason_threshold=0.86)).reason_tp == 0


def test_grounding_is_lcs_over_point_length():
    # normalised point 体温38.5℃,伴寒战 has 11 characters; 体温38.5℃ (7) appear in order in the record
    assert grounding("体温38.5℃，伴寒战", "患者发热，体温38.5℃。") == pytest.approx(7 / 11)
    assert grounding("2. 体温38.5℃；", "体温 38.5℃") == 1.0


def test_score_without_gold_has_grounding_and_stats_only():
    record = {
        "id": 7,
        "diseases": "发热",
        "reason": "1. 发热3天；\\n2. 体温38.5℃。",
        "feature_content": "发热3天，体温38.5℃",
    }
    score = score_record(load_answers([record])[0], None, EvalConfig())
    assert score.grounding == [1.0, 1.0]
    assert (score.n_reasons, score.reason_chars, score.n_diseases, score.input_chars) == (2, 11, 1, 12)
    assert score.disease_gold == 0


def test_missing_prediction_is_an_empty_answer_grounded_in_gold_record():
    gold = Answer(1, ["发热"], ["体温38.5℃"], feature_content="体温38.5℃")
    score = score_record(None, gold, EvalConfig())
    assert (score.disease_tp, score.disease_pred, score.disease_gold) == (0, 0, 1)
    assert (score.n_reasons, score.input_chars, score.grounding) == (0, 7, [])


def test_config_rejects_unknown_metric_and_extra_keys():
    with pytest.raises(ValueError, match="unknown metric 'reason.f2'"):
        EvalConfig(weights={"reason.f2": 1.0})
    with pytest.raises(ValueError, match="extra"):
        EvalConfig(treshold=0.5)
