"""Trustworthy maximization: the transform, ECE by hand, the grid search and the calibrate command."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import torch

from engine.errors import SpecError
from trainers.first.calibrate import (
    COARSE_GRID,
    calibrate_store,
    expected_calibration_error,
    resolve_c,
    search_c,
    teacher_ece,
    teacher_target,
    validation_keys,
)
from trainers.first.cli import main
from trainers.first.topk_store import TopKWriter


def test_ece_matches_a_hand_computed_example():
    confidence = [0.95, 0.85, 0.85, 0.55, 0.25, 1.0]
    correct = [1, 1, 0, 1, 0, 1]
    # bin 9: 0.95 and 1.0 (acc 1, conf 0.975); 8: 0.85 x2 (acc 0.5); 5: 0.55 (acc 1); 2: 0.25 (acc 0)
    by_hand = (2 * 0.025 + 2 * 0.35 + 1 * 0.45 + 1 * 0.25) / 6
    assert expected_calibration_error(confidence, correct) == pytest.approx(by_hand)
    assert expected_calibration_error([0.3, 0.3], [0, 0]) == pytest.approx(0.3)


def test_transform_is_a_softmax_of_probabilities_over_c():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.1]]))
    expected = np.exp(np.array([0.5, 0.3, 0.1]) / 0.5)
    assert teacher_target(lp, 0.5).exp()[0].numpy() == pytest.approx(expected / expected.sum())
    with_tail = np.exp(np.array([0.5, 0.3, 0.1, 0.1]) / 0.25)  # the tail bucket holds 1 - 0.9
    assert teacher_target(lp, 0.25, tail_bucket=True).exp()[0].numpy() == pytest.approx(
        with_tail / with_tail.sum()
    )
    assert teacher_target(lp, None).exp()[0].numpy() == pytest.approx([5 / 9, 3 / 9, 1 / 9])  # identity
    absent = torch.log(torch.tensor([[0.6, 0.0, 0.2]]))  # an absent entry gets nothing, not exp(0 / c)
    assert teacher_target(absent, 0.5).exp()[0, 1].item() == 0.0


def test_teacher_ece_uses_the_transformed_top1_and_the_gold_token():
    lp = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], dtype=np.float32))
    ids = np.array([[4, 5, 6], [7, 8, 9]])
    gold = np.array([4, 9])  # row 0: the top-1 (id 4) is right; row 1: the top-1 is id 8, gold is 9
    rows = ([0.6, 0.3, 0.1], [0.7, 0.2, 0.1])
    conf = [math.exp(max(row) / 0.5) / sum(math.exp(p / 0.5) for p in row) for row in rows]
    assert teacher_ece(lp, ids, gold, 0.5) == pytest.approx(expected_calibration_error(conf, [1, 0]))


def synthetic_teacher(n: int, seed: int = 0):
    """An overconfident teacher: its top-1 is right less often than its probability says."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * 3
    lp = np.sort(logits - np.log(np.exp(logits).sum(1, keepdims=True) + 0.2), 1)[:, ::-1].astype(np.float32)
    ids = rng.integers(0, 50, size=(n, 5))
    right = rng.random(n) < np.exp(lp[:, 0]) * 0.6
    gold = np.where(right, ids[:, 0], ids[:, 1])
    return lp, ids, gold


def test_search_covers_the_coarse_grid_then_fine_steps_around_the_best():
    lp, ids, gold = synthetic_teacher(3000)
    best, grid, identity = search_c(lp, ids, gold)
    tried = dict(grid)
    assert set(COARSE_GRID) <= set(tried)
    coarse_best = min(COARSE_GRID, key=lambda c: tried[c])
    assert {round(coarse_best + 0.02 * i, 2) for i in range(-5, 6) if coarse_best + 0.02 * i > 0} <= set(
        tried
    )
    assert tried[best] == min(tried.values()) < identity  # the overconfident teacher needs a transform


def calibrated_teacher(n: int, seed: int = 0):
    """A teacher whose top-1 is right exactly as often as its (renormalised) probability says."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    order = np.argsort(-p, 1)
    p = np.take_along_axis(p, order, 1)
    ids = rng.integers(0, 50, size=(n, 5))
    gold = ids[np.arange(n), [rng.choice(5, p=row) for row in p]]
    return np.log(p).astype(np.float32), ids, gold


def test_the_identity_is_kept_when_no_c_beats_it():
    lp, ids, gold = calibrated_teacher(6000)
    best, grid, identity = search_c(lp, ids, gold)
    assert best is None and identity < min(ece for _, ece in grid)


@pytest.mark.parametrize("seed", range(6))
def test_calibration_never_chooses_a_c_worse_than_no_transform(tmp_path, seed):
    lp, ids, gold = (synthetic_teacher if seed % 2 else calibrated_teacher)(2500, seed=seed)
    with TopKWriter(tmp_path, 5, 50, "h") as writer:
        for r in range(50):
            rows = slice(50 * r, 50 * r + 50)
            writer.append(f"rec{r}", np.concatenate([[-1], gold[rows]]), ids[rows], lp[rows])
    result = calibrate_store(tmp_path, val_fraction=0.5, log=None)
    assert result.ece <= result.ece_identity
    assert (result.c is None) == (min(ece for _, ece in result.grid) >= result.ece_identity)
    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    assert resolve_c("manifest", manifest, False, str(tmp_path)) == result.c  # None: train without it


def test_warnings_for_the_teachers_own_output_a_grid_edge_and_a_small_split(tmp_path, capsys):
    lp, ids, _ = synthetic_teacher(1000, seed=2)
    gold = ids[:, 0]  # the stored tokens are the teacher's greedy choices
    with TopKWriter(tmp_path, 5, 50, "h") as writer:
        for r in range(20):
            rows = slice(50 * r, 50 * r + 50)
            writer.append(f"rec{r}", np.concatenate([[-1], gold[rows]]), ids[rows], lp[rows])
    assert main(["distill", "calibrate", str(tmp_path), "--val-fraction", "1"]) == 0
    out = capsys.readouterr().out
    cal = orjson.loads((tmp_path / "manifest.json").read_bytes())["calibration"]
    assert cal["top1_agreement"] == 1.0 and cal["c"] == min(c for c, _ in cal["grid"])  # sharpest wins
    assert len(cal["warnings"]) == 3 and all(f"warning: {w}" in out for w in cal["warnings"])
    assert "teacher's own output" in out and "reference answers" in out
    assert "edge of the searched grid" in out and "one-hot" in out
    assert "only 1000 validation tokens" in out


def test_validation_split_is_stable_and_order_free():
    keys = [f"key-{i}" for i in range(200)]
    split = validation_keys(keys, 0.1)
    assert len(split) == 20 and split == validation_keys(list(reversed(keys)), 0.1)
    assert validation_keys(keys[:3], 0.1) == validation_keys(keys[:3], 0.01)  # at least one key
    with pytest.raises(SpecError, match="val-fraction"):
        validation_keys(keys, 0.0)


@pytest.fixture
def store(tmp_path):
    lp, ids, gold = synthetic_teacher(2000, seed=1)
    with TopKWriter(tmp_path, 5, 50, "h") as writer:
        for r in range(40):
            rows = slice(50 * r, 50 * r + 50)
            writer.append(f"rec{r}", np.concatenate([[-1], gold[rows]]), ids[rows], lp[rows])
    return tmp_path


def test_calibrate_command_prints_ece_per_c_and_records_the_choice(store, capsys):
    assert main(["distill", "calibrate", str(store), "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    printed = [line for line in out.splitlines() if line.strip().startswith("c=")]
    assert len(printed) >= len(COARSE_GRID) and "ECE=" in printed[0]
    manifest = orjson.loads((store / "manifest.json").read_bytes())
    cal = manifest["calibration"]
    assert cal["val_records"] == 20 and f"chosen c={cal['c']:.2f}" in out
    assert cal["ece"] == min(ece for _, ece in cal["grid"]) < cal["ece_identity"]
    assert "identity (no transform): ECE=" in out
    assert cal == orjson.loads(orjson.dumps(calibrate_store(store, 0.5, write=False, log=None).__dict__))
    assert resolve_c("manifest", manifest, False, str(store)) == cal["c"]
    with pytest.raises(SpecError, match="tail_bucket"):
        resolve_c("manifest", manifest, True, str(store))


def test_uncalibrated_store_asks_for_calibration(store):
    manifest = orjson.loads((store / "manifest.json").read_bytes())
    with pytest.raises(SpecError, match="distill calibrate"):
        resolve_c("manifest", manifest, False, str(store))
    assert (
        resolve_c("none", manifest, False, str(store)) is None and resolve_c(0.3, manifest, False, "") == 0.3
    )
