"""ROUGE-L: the tokenizer, exact agreement with rouge-score, the index's pruning, the rouge_dedupe filter."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import orjson
import pytest
from rapidfuzz import process
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer, tokenize

from filters.base import build_filter
from filters.rouge import CJKTokenizer, RougeIndex, f1_from_lcs, rouge_l
from filters.rouge_index import _window

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HEALTHAI = sorted((SHARED / "healthai2025").glob("*camp_data_step_*_without_answer.jsonl"))
SEED_TASKS = SHARED / "self-instruct-seed" / "seed_tasks.jsonl"
TOKENIZER = CJKTokenizer()
SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=TOKENIZER)


def reference(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


def light_edit(text: str, rng: random.Random, rate: float) -> str:
    """Delete, insert or substitute about `rate` of the characters (deterministic under `rng`)."""
    chars = list(text)
    for _ in range(max(1, int(len(chars) * rate))):
        i = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4 and i < len(chars):
            del chars[i]
        elif op < 0.7:
            chars.insert(i, rng.choice("无发热咳嗽头痛腹泻左右，。12"))
        elif i < len(chars):
            chars[i] = rng.choice("上下前后轻重")
    return "".join(chars)


def real_records() -> list[str]:
    if not HEALTHAI:
        pytest.skip(f"real data absent: {SHARED / 'healthai2025'} (see /work/shared/data/README.md)")
    return [orjson.loads(line)["feature_content"] for path in HEALTHAI for line in path.open("rb")]


def test_tokenizer_is_rouge_score_on_latin_text_and_splits_cjk_into_characters():
    text = "Write a POEM about 2 cats, café-style!  HBV-DNA 3.2E+4"
    assert TOKENIZER.tokenize(text) == tokenize.tokenize(text, None)
    assert TOKENIZER.tokenize("主诉: 咳嗽3天ALT升高") == [
        "主",
        "诉",
        "咳",
        "嗽",
        "3",
        "天",
        "alt",
        "升",
        "高",
    ]
    assert TOKENIZER.tokenize("こんにちは、世界") == list("こんにちは世界")


def test_default_rouge_score_sees_nothing_in_chinese_but_ours_does():
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score("患者咳嗽三天", "患者咳嗽三天")["rougeL"].fmeasure == 0
    assert rouge_l("患者咳嗽三天", "患者咳嗽三天") == 1.0


def test_fixture_pairs_match_rouge_score_exactly():
    pairs = [json.loads(line) for line in (DATA / "filters_rouge_pairs.jsonl").read_text().splitlines()]
    for pair in pairs:
        expected = reference(pair["target"], pair["prediction"])
        assert rouge_l(pair["target"], pair["prediction"]) == expected, pair["note"]


def test_f1_arithmetic_matters_at_the_threshold():
    # 7 of 7 kept tokens in a 13-token text: 2PR/(P+R) rounds above 0.7, 2*LCS/(m+n) is exactly 0.7.
    assert reference("甲乙丙丁戊己庚辛壬癸子丑寅", "甲乙丙丁戊己庚") > 0.7
    assert f1_from_lcs(7, 13, 7) > 0.7 and not 2 * 7 / (13 + 7) > 0.7


def test_self_instruct_seed_tasks_score_as_with_rouge_scores_default_tokenizer():
    if not SEED_TASKS.exists():
        pytest.skip(f"real data absent: {SEED_TASKS}")
    instructions = [orjson.loads(line)["instruction"] for line in SEED_TASKS.open("rb")]
    default = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for a, b in itertools.product(instructions[:40], instructions[40:80]):
        assert rouge_l(a, b) == default.score(a, b)["rougeL"].fmeasure


def test_real_pairs_agree_with_rouge_score_score_and_decision():
    records = [t for t in real_records() if len(TOKENIZER.tokenize(t)) <= 110]
    rng = random.Random(7)
    pairs = [(rng.choice(records), rng.choice(records)) for _ in range(1500)]  # shared templates
    pairs += [
        (t, light_edit(t, rng, rng.choice([0.05, 0.15, 0.25, 0.35]))) for t in rng.sample(records, 1500)
    ]
    scores = [reference(a, b) for a, b in pairs]
    assert sum(s > 0.7 for s in scores) > 300 and sum(0 < s <= 0.7 for s in scores) > 300  # both sides
    for (a, b), expected in zip(pairs, scores, strict=True):
        assert rouge_l(a, b) == expected


def brute_force_stream(size: int, threshold: float, score) -> list[tuple[int, float] | None]:
    """Alpaca's loop: item i against every kept item j, `score(i, j)` with i the new (target) side;
    the best match above the threshold (earliest on ties) or None."""
    kept: list[int] = []
    out = []
    for i in range(size):
        best = None
        for j in kept:
            s = score(i, j)
            if s > threshold and (best is None or s > best[1]):
                best = (j, s)
        out.append(best)
        if best is None:
            kept.append(i)
    return out


def index_stream(texts: list[str], threshold: float) -> list[tuple[int, float] | None]:
    index, out = RougeIndex(), []
    for i, text in enumerate(texts):
        match = index.best_match(text, threshold)
        out.append(None if match is None else (match.id, match.score))
        if match is None:
            index.add(i, text)
    return out


def test_index_equals_rouge_score_pairwise_on_a_small_real_stream():
    records = [t for t in real_records() if len(TOKENIZER.tokenize(t)) <= 60]
    rng = random.Random(3)
    base = rng.sample(records, 40)
    texts = base + [light_edit(rng.choice(base), rng, rng.choice([0.05, 0.2, 0.3])) for _ in range(30)]
    rng.shuffle(texts)
    expected = brute_force_stream(len(texts), 0.7, lambda i, j: reference(texts[i], texts[j]))
    assert sum(e is not None for e in expected) >= 10
    assert index_stream(texts, 0.7) == expected


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 0.9])
def test_index_prunes_without_false_negatives(threshold):
    records = real_records()
    rng = random.Random(11)
    base = rng.sample(records, 250)
    texts = base + [light_edit(rng.choice(base), rng, rng.choice([0.02, 0.1, 0.2, 0.4])) for _ in range(250)]
    rng.shuffle(texts)
    # Every pair scored, no pruning: rapidfuzz's LCS (the same as rouge-score's, checked above).
    tokens = [TOKENIZER.tokenize(t) for t in texts]
    vocab: dict[str, str] = {}
    encoded = ["".join(vocab.setdefault(tok, chr(len(vocab) + 1)) for tok in ts) for ts in tokens]
    lcs = process.cdist(encoded, encoded, scorer=LCSseq.similarity, workers=1)
    lens = [len(ts) for ts in tokens]

    def every_pair(i: int, j: int) -> float:
        return f1_from_lcs(int(lcs[i, j]), lens[i], lens[j]) if lens[i] and lens[j] else 0.0

    expected = brute_force_stream(len(texts), threshold, every_pair)
    assert sum(e is not None for e in expected) >= 20
    assert index_stream(texts, threshold) == expected


def test_length_window_is_exact():
    for m in (1, 2, 7, 13, 50, 333):
        for t in (0.0, 0.5, 0.7, 0.95):
            n_lo, n_hi, need = _window(m, t)
            for n in range(1, 3 * m + 10):
                possible = f1_from_lcs(min(m, n), m, n) > t
                assert possible == (n_lo <= n <= n_hi), (m, t, n)
            assert f1_from_lcs(need, m, n_lo) > t >= f1_from_lcs(need - 1, m, n_lo)


def test_index_best_match_orientation_and_ties():
    index = RougeIndex()
    index.add("a", "甲乙丙丁戊")
    index.add("b", "甲乙丙丁戊")
    match = index.best_match("甲乙丙丁戊己", 0.5)
    assert match.id == "a" and match.score == reference("甲乙丙丁戊己", "甲乙丙丁戊")
    assert [m.id for m in index.matches("甲乙丙丁戊己", 0.5)] == ["a", "b"]
    assert index.best_match("子丑寅卯", 0.5) is None and not index.exceeds("", 0.0)
    with pytest.raises(ValueError):
        index.best_match("甲", 1.0)


def cases() -> list[dict]:
    return [json.loads(line) for line in (DATA / "filters_cases.jsonl").read_text().splitlines()]


def test_filter_drops_near_duplicates_in_commit_order_and_names_the_kept_id():
    records = cases()
    dedupe = build_filter("rouge_dedupe", {"threshold": 0.7})
    copy = dict(
        records[4], id="copy", feature_content=records[4]["feature_content"].replace("39.2℃", "39.5℃")
    )
    results = [dedupe(r) for r in [*records[:6], copy]]
    assert (
        results[6][0] is False
        and "vs id 'c05'" in results[6][1]
        and results[6][1].startswith("near-duplicate:")
    )
    assert dedupe.stats()["dropped"] == sum(r is not True for r in results)


def test_filter_seed_pool_prepopulates_the_index(tmp_path):
    records = cases()
    (tmp_path / "seed.jsonl").write_text(
        "".join(
            json.dumps({"id": f"s{i}", "text": r["feature_content"]}) + "\n"
            for i, r in enumerate(records[:3])
        )
    )
    dedupe = build_filter("rouge_dedupe", {"seed": "seed.jsonl", "seed_fields": ["text"]}, base_dir=tmp_path)
    verdict = dedupe(dict(records[1], id="x"))
    assert verdict[0] is False and "seed id 's1'" in verdict[1]
    assert dedupe(records[5]) is True and dedupe.stats()["seed"] == 3


def test_core_option_compares_without_template_and_counts_changed_decisions(tmp_path):
    records = cases()
    with (tmp_path / "corpus.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    whole = build_filter("rouge_dedupe", {})
    core = build_filter(
        "rouge_dedupe", {"core": True, "boilerplate_from": ["corpus.jsonl"]}, base_dir=tmp_path
    )
    whole_kept = sum(whole(r) is True for r in records)
    core_kept = sum(core(r) is True for r in records)
    assert whole_kept < len(records) == core_kept  # distinct patients sharing the template all stay
    assert core.stats()["core_changed"] == len(records) - whole_kept
    edited = dict(records[0], id="edit", feature_content=records[0]["feature_content"].replace("5天", "6天"))
    assert core(edited)[0] is False


def test_core_needs_a_corpus_and_missing_fields_are_errors():
    with pytest.raises(ValueError, match="core = true needs"):
        build_filter("rouge_dedupe", {"core": True})
    with pytest.raises(Exception, match="no field 'nope'"):
        build_filter("rouge_dedupe", {"fields": ["nope"]})({"id": 1, "feature_content": "x"})
    with pytest.raises(Exception, match="extra"):
        build_filter("rouge_dedupe", {"treshold": 0.7})


@pytest.mark.parametrize("share", [0.5, 0.9, 1.0])
def test_containment_search_equals_brute_force(share):
    records = real_records()
    rng = random.Random(13)
    kept = rng.sample(records, 300)
    inserted = [
        t[: len(t) // 2] + "患者精神可，睡眠饮食尚可。" + t[len(t) // 2 :] for t in rng.sample(kept, 20)
    ]
    queries = (
        inserted + [light_edit(rng.choice(kept), rng, 0.05) for _ in range(20)] + rng.sample(records, 40)
    )
    index = RougeIndex()
    for i, text in enumerate(kept):
        index.add(i, text)
    tokens = [TOKENIZER.tokenize(t) for t in kept + queries]
    vocab: dict[str, str] = {}
    encoded = ["".join(vocab.setdefault(tok, chr(len(vocab) + 1)) for tok in ts) for ts in tokens]
    lcs = process.cdist(encoded[len(kept) :], encoded[: len(kept)], scorer=LCSseq.similarity, workers=1)
    found = 0
    for q, query in enumerate(queries):
        expected = {k for k in range(len(kept)) if tokens[k] and lcs[q, k] / len(tokens[k]) >= share}
        expected = {k for k in expected if len(tokens[k]) >= 20}
        assert {m.id for m in index.contained(query, share, min_len=20)} == expected
        found += len(expected)
    assert found >= 20
