"""ROUGE-L near-duplicate filtering: our RougeIndex versus the Self-Instruct/Alpaca loop, in one run.

Data: the 8000 real records of /work/shared/data/healthai2025 (`feature_content`) plus 12000 light
edits of them (seeded, deterministic), shuffled: 20000 Chinese records deduplicated at ROUGE-L F1 > 0.7.

- ours: `filters.rouge.RougeDedupe` (the filter the pipeline runs) over all records; wall time, and
  peak memory in a second, traced run (tracemalloc slows the code it traces, so it is timed apart).
- Alpaca: `rouge_scorer._score_lcs(new_tokens, kept_tokens)` against every kept record, as
  generate_instruction.py does (tokens pre-computed, same CJKTokenizer), in one process. Run fully on a
  subset (clusters of originals with their edits, so there are duplicates) and compared decision by
  decision with ours; for all 20000 it is extrapolated: the pairs it would score (known exactly from
  the kept counts) times its mean time per pair measured on pairs sampled from those it would score.
  Alpaca spreads the loop over `Pool(num_cpus)`: divide its times by the cores you would give it.
- `--verify-all` also scores every pair of the 20000 run with rapidfuzz and no pruning (minutes), to
  show the pruning changes no decision at full scale.

Run: `python benchmarks/rouge_dedupe.py [--subset 400] [--pairs 2000] [--verify-all] [--json out.json]`
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.jsonl import read_jsonl  # noqa: E402
from filters.rouge import CJKTokenizer, RougeDedupe, RougeDedupeConfig, f1_from_lcs  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "healthai2025"
THRESHOLD = 0.7
INSERTS = ["患者精神可，睡眠饮食尚可。", "无发热、咳嗽。", "建议复查。", "家属陪同就诊。"]
FILLER = "无发热咳嗽头痛腹泻恶心呕吐左右上下前后轻重偶有明显伴及1234567"


def load_originals() -> list[str]:
    files = sorted(DATA.glob("*camp_data_step_*_without_answer.jsonl"))
    if len(files) < 2:
        sys.exit(f"data absent: {DATA} (see /work/shared/data/README.md)")
    return [record["feature_content"] for path in files for record in read_jsonl(path)]


def light_edit(text: str, rng: random.Random) -> str:
    """Character edits at a rate of 1-30%, sometimes a sentence inserted or a segment dropped."""
    chars = list(text)
    rate = rng.choice([0.01, 0.03, 0.05, 0.1, 0.2, 0.3])
    for _ in range(max(1, int(len(chars) * rate))):
        i = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.35 and i < len(chars):
            del chars[i]
        elif op < 0.7:
            chars.insert(i, rng.choice(FILLER))
        elif i < len(chars):
            chars[i] = rng.choice(FILLER)
    text = "".join(chars)
    if rng.random() < 0.3:
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(INSERTS) + text[cut:]
    if rng.random() < 0.2:
        parts = text.split("，")
        if len(parts) > 2:
            del parts[rng.randrange(len(parts))]
        text = "，".join(parts)
    return text


def build_stream(originals: list[str], variants: int, seed: int) -> tuple[list[str], list[int]]:
    """(texts, source original of each text), shuffled."""
    rng = random.Random(seed)
    sources = list(range(len(originals))) + [rng.randrange(len(originals)) for _ in range(variants)]
    texts = originals + [light_edit(originals[s], rng) for s in sources[len(originals) :]]
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [sources[i] for i in order]


class Clock:
    """Wall and CPU seconds of a block: the machine is shared, CPU time is what contention leaves alone."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_ours(texts: list[str]) -> tuple[list[object], Clock, RougeDedupe]:
    """Decisions (None: kept, else the index of the kept text it duplicates), timing, the filter."""
    dedupe = RougeDedupe(RougeDedupeConfig(threshold=THRESHOLD, fields=["text"]))
    decisions = []
    with Clock() as clock:
        for i, text in enumerate(texts):
            match = dedupe.decide({"id": i, "text": text})
            decisions.append(None if match is None else match.id[1])
    return decisions, clock, dedupe


def run_alpaca(texts: list[str]) -> tuple[list[object], Clock]:
    """Alpaca's generate_instruction.py loop: the new text's tokens against every kept text's tokens."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=CJKTokenizer())
    kept_tokens: list[list[str]] = []
    kept_ids: list[int] = []
    decisions: list[object] = []
    with Clock() as clock:
        for i, text in enumerate(texts):
            new_tokens = scorer._tokenizer.tokenize(text)
            scores = [rouge_scorer._score_lcs(new_tokens, tokens).fmeasure for tokens in kept_tokens]
            if scores and max(scores) > THRESHOLD:
                decisions.append(kept_ids[int(np.argmax(scores))])  # the first best, as our index reports
                continue
            decisions.append(None)
            kept_tokens.append(new_tokens)
            kept_ids.append(i)
    return decisions, clock


def alpaca_seconds_per_pair(texts: list[str], decisions: list[object], pairs: int, seed: int) -> Clock:
    """Mean time of `_score_lcs` over pairs drawn uniformly from those the Alpaca loop would score."""
    tok = CJKTokenizer()
    kept_before, kept = [], []
    for i, decision in enumerate(decisions):
        kept_before.append(len(kept))
        if decision is None:
            kept.append(i)
    weights = np.asarray(kept_before, dtype=np.float64)
    rng = np.random.default_rng(seed)
    queries = rng.choice(len(texts), size=pairs, p=weights / weights.sum())
    sample = [(int(q), kept[int(rng.integers(kept_before[q]))]) for q in queries]
    tokens = {i: tok.tokenize(texts[i]) for pair in sample for i in pair}
    with Clock() as clock:
        for q, k in sample:
            rouge_scorer._score_lcs(tokens[q], tokens[k])
    clock.wall, clock.cpu = clock.wall / pairs, clock.cpu / pairs
    return clock


def verify_without_pruning(texts: list[str], decisions: list[object]) -> int:
    """Decisions that differ from scoring every kept text (rapidfuzz LCS, rouge-score's F1): 0 expected."""
    tok = CJKTokenizer()
    vocab: dict[str, str] = {}
    encoded = ["".join(vocab.setdefault(t, chr(len(vocab) + 1)) for t in tok.tokenize(x)) for x in texts]
    kept: list[int] = []
    differ = 0
    for i, seq in enumerate(encoded):
        best = None
        if kept and seq:
            lcs = process.cdist([seq], [encoded[k] for k in kept], scorer=LCSseq.similarity, workers=1)[0]
            scores = [f1_from_lcs(int(v), len(seq), len(encoded[k])) for v, k in zip(lcs, kept, strict=True)]
            top = int(np.argmax(scores))
            best = kept[top] if scores[top] > THRESHOLD else None
        differ += best != decisions[i]
        if decisions[i] is None:
            kept.append(i)
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=12000, help="light edits added to the 8000 records")
    parser.add_argument("--subset", type=int, default=400, help="records of the fully-run baseline (about)")
    parser.add_argument("--pairs", type=int, default=2000, help="baseline pairs timed for the extrapolation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-all", action="store_true", help="check all decisions without pruning")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    texts, sources = build_stream(load_originals(), args.variants, args.seed)
    n = len(texts)
    decisions, ours, dedupe = run_ours(texts)
    kept = sum(d is None for d in decisions)
    stats = dedupe.stats()
    del dedupe
    gc.collect()
    tracemalloc.start()
    run_ours(texts)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    # The subset: random originals with all their edits, in stream order.
    rng = random.Random(args.seed + 1)
    chosen = set(rng.sample(range(8000), max(1, args.subset * 8000 // n)))
    subset = [t for t, s in zip(texts, sources, strict=True) if s in chosen]
    sub_decisions, sub_ours, _ = run_ours(subset)
    sub_alpaca_decisions, sub_alpaca = run_alpaca(subset)
    same = sub_decisions == sub_alpaca_decisions
    sub_kept = sum(d is None for d in sub_decisions)
    per_pair = alpaca_seconds_per_pair(texts, decisions, args.pairs, args.seed)
    total_pairs = stats["pairs_scored_with_lcs"] + stats["pairs_pruned"]
    differ = verify_without_pruning(texts, decisions) if args.verify_all else None

    est_wall, est_cpu = total_pairs * per_pair.wall, total_pairs * per_pair.cpu
    figures = {
        "records": n, "kept": kept, "ours_wall_s": ours.wall, "ours_cpu_s": ours.cpu,
        "ours_traced_peak_mib": traced_peak / 2**20,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pairs_alpaca_would_score": total_pairs, "pairs_lcs_computed": stats["pairs_scored_with_lcs"],
        "alpaca_wall_s_per_pair": per_pair.wall, "alpaca_cpu_s_per_pair": per_pair.cpu,
        "alpaca_est_wall_s": est_wall, "alpaca_est_cpu_s": est_cpu,
        "subset_records": len(subset), "subset_kept": sub_kept,
        "subset_ours_wall_s": sub_ours.wall, "subset_ours_cpu_s": sub_ours.cpu,
        "subset_alpaca_wall_s": sub_alpaca.wall, "subset_alpaca_cpu_s": sub_alpaca.cpu,
        "subset_same_decisions": same, "decisions_differing_unpruned": differ,
    }  # fmt: skip
    print("| run | records | kept | ours wall (CPU) | Alpaca loop wall (CPU) | speed-up wall (CPU) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| subset, both run fully | {len(subset)} | {figures['subset_kept']} "
        f"| {sub_ours.wall:.3f} s ({sub_ours.cpu:.3f} s) | {sub_alpaca.wall:.1f} s ({sub_alpaca.cpu:.1f} s) "
        f"| {sub_alpaca.wall / sub_ours.wall:,.0f}x ({sub_alpaca.cpu / sub_ours.cpu:,.0f}x) |"
    )
    print(
        f"| all records | {n} | {kept} | {ours.wall:.1f} s ({ours.cpu:.1f} s) "
        f"| {est_wall / 3600:,.1f} h ({est_cpu / 3600:,.1f} h), extrapolated "
        f"| {est_wall / ours.wall:,.0f}x ({est_cpu / ours.cpu:,.0f}x) |"
    )
    print(
        f"\nsubset decisions identical (kept set and duplicate named): {same}\n"
        f"ours: peak traced memory {traced_peak / 2**20:.1f} MiB for {kept} kept records; "
        f"process max RSS {figures['max_rss_mib']:.0f} MiB\n"
        f"Alpaca loop would score {total_pairs:,} pairs at {per_pair.wall * 1e3:.2f} ms wall, "
        f"{per_pair.cpu * 1e3:.2f} ms CPU each (mean of {args.pairs} sampled); ours computed the LCS of "
        f"{stats['pairs_scored_with_lcs']:,} of them ({stats['pairs_scored_with_lcs'] / total_pairs:.1%}), "
        "the bounds ruled out the rest"
    )
    if differ is not None:
        print(f"all {n} decisions checked against every pair scored without pruning: {differ} differ")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
