"""The top-k store: exact (raw) and bounded (packed) round trips, size per token, torn tails, refusals."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from engine.errors import SpecError
from engine.types import TokenTopK
from trainers.first.topk_store import (
    CLAMP_NATS,
    PACKED_BOUND_NATS,
    TopKReader,
    TopKWriter,
    capture_from_completion,
    check_compatible,
    prompt_digest,
    vocab_hash,
)

K = 5


def make_record(rng: np.random.Generator, rows: int, vocab: int, sharp: float = 4.0):
    """Realistic rows: the top-k of a softmax over 200 random logits, best first."""
    logits = rng.normal(size=(rows, 200)) * sharp
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    lp = np.sort(lp, 1)[:, ::-1][:, :K].astype(np.float32)
    ids = rng.choice(vocab, size=(rows, K), replace=True).astype(np.int32)
    tokens = rng.integers(0, vocab, size=rows + 1).astype(np.int32)
    return tokens, ids, lp


def store_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.glob("shard-*"))


@pytest.mark.parametrize("vocab", [49152, 152064])
def test_raw_mode_round_trips_bit_for_bit(tmp_path, vocab):
    rng = np.random.default_rng(0)
    written = {}
    for shard in (0, 3):
        with TopKWriter(tmp_path, K, vocab, "h", packed=False, shard=shard) as writer:
            for i in range(20):
                tokens, ids, lp = make_record(rng, int(rng.integers(1, 80)), vocab)
                lp = lp.astype(np.float16)
                lp[0, -1] = -np.inf
                tokens[0] = -1 if i % 3 == 0 else tokens[0]  # context token unknown
                written[f"s{shard}-{i}"] = (tokens, ids, lp)
                writer.append(f"s{shard}-{i}", tokens, ids, lp)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-00000.bin", "shard-00000.idx", "shard-00003.bin", "shard-00003.idx"
    ]  # fmt: skip
    reader = TopKReader(tmp_path)
    assert len(reader) == 40 and set(reader.keys()) == set(written)
    for key, (tokens, ids, lp) in written.items():
        got_tokens, got_ids, got_lp = reader[key]
        assert np.array_equal(got_tokens, tokens) and np.array_equal(got_ids, ids)
        assert got_lp.astype(np.float16).tobytes() == lp.tobytes()  # float16 -> float32 is exact


def test_packed_mode_within_documented_bound(tmp_path):
    rng = np.random.default_rng(1)
    vocab = 152064
    written = {}
    with TopKWriter(tmp_path, K, vocab, "h", packed=True) as writer:
        for i in range(30):
            tokens, ids, lp = make_record(
                rng, int(rng.integers(2, 120)), vocab, sharp=float(rng.uniform(0.5, 9))
            )
            lp[0, 3:] = -np.inf  # fewer than k returned
            lp[1, 4] = lp[1, 0] - 30.0  # far below the top: clamped
            written[f"r{i}"] = (tokens, ids, lp)
            writer.append(f"r{i}", tokens, ids, lp)
    reader = TopKReader(tmp_path)
    worst = 0.0
    for key, (tokens, ids, lp) in written.items():
        got_tokens, got_ids, got_lp = reader[key]
        assert np.array_equal(got_tokens, tokens) and np.array_equal(got_ids, ids)
        assert np.array_equal(np.isinf(got_lp), np.isinf(lp))
        near = np.isfinite(lp) & (lp >= lp[:, :1] - CLAMP_NATS)
        worst = max(worst, float(np.abs(got_lp[near] - lp[near]).max()))
        far = np.isfinite(lp) & ~near
        top = np.broadcast_to(got_lp[:, :1], lp.shape)[far]
        assert far[1, 4]  # the planted far entry is exercised in every record
        assert (got_lp[far] >= lp[far]).all() and np.allclose(got_lp[far], top - CLAMP_NATS, atol=0.05)
    assert worst <= PACKED_BOUND_NATS
    assert worst > PACKED_BOUND_NATS / 4  # the bound is tight, not vacuous


def test_packed_sorts_rows_best_first(tmp_path):
    with TopKWriter(tmp_path, K, 1000, "h") as writer:
        writer.append("a", [1, 2], [[5, 6, 7, 8, 9]], [[-3.0, -0.5, -np.inf, -2.0, -1.0]])
    _, ids, lp = TopKReader(tmp_path)["a"]
    assert ids.tolist() == [[6, 9, 8, 5, 7]]
    assert np.allclose(lp[0, :4], [-0.5, -1.0, -2.0, -3.0], atol=PACKED_BOUND_NATS) and lp[0, 4] == -np.inf


def test_bytes_per_token_goals(tmp_path):
    rng = np.random.default_rng(2)
    sizes = {}
    for name, vocab, packed in [("raw49k", 49152, False), ("packed152k", 152064, True)]:
        with TopKWriter(tmp_path / name, K, vocab, "h", packed=packed) as writer:
            for i in range(10):  # 300-token answers keyed by 32-hex-digit work-item keys
                writer.append(f"{i:032x}", *make_record(rng, 300, vocab))
        sizes[name] = store_bytes(tmp_path / name) / 3000  # .bin and .idx together
    assert sizes["raw49k"] == pytest.approx(32.0, abs=0.3)  # 32 per row + ~0.27 of index
    assert sizes["packed152k"] <= 20.0


def test_torn_tail_dropped_on_reopen(tmp_path):
    rng = np.random.default_rng(3)
    records = {f"k{i}": make_record(rng, 40, 5000) for i in range(4)}
    with TopKWriter(tmp_path, K, 5000, "h") as writer:
        for key in ("k0", "k1"):
            writer.append(key, *records[key])
    good_bin = (tmp_path / "shard-00000.bin").stat().st_size
    # crash 1: a record's rows fully written, its index line never; crash 2: half an index line
    with open(tmp_path / "shard-00000.bin", "ab") as f:
        f.write(b"\x07" * 57)
    with open(tmp_path / "shard-00000.idx", "ab") as f:
        f.write(b'{"key":"k9","offset":')
    reader = TopKReader(tmp_path)  # readers ignore the tail without touching it
    assert reader.keys() == ["k0", "k1"]
    assert (tmp_path / "shard-00000.bin").stat().st_size == good_bin + 57
    with TopKWriter(tmp_path, K, 5000, "h") as writer:  # reopening drops the tail
        assert (tmp_path / "shard-00000.bin").stat().st_size == good_bin
        assert "k1" in writer and "k9" not in writer
        for key in ("k2", "k3"):
            writer.append(key, *records[key])
    reader = TopKReader(tmp_path)
    assert reader.keys() == ["k0", "k1", "k2", "k3"]
    for key, (tokens, ids, _) in records.items():
        assert np.array_equal(reader[key][0], tokens) and np.array_equal(reader[key][1], ids)


def test_writer_refusals(tmp_path):
    tokens, ids, lp = make_record(np.random.default_rng(4), 3, 100)
    with TopKWriter(tmp_path, K, 100, "h") as writer:
        writer.append("a", tokens, ids, lp)
        with pytest.raises(SpecError, match="already stored"):
            writer.append("a", tokens, ids, lp)
        with pytest.raises(SpecError, match=r"token_ids\[T\+1\]"):
            writer.append("b", tokens[:-1], ids, lp)
        with pytest.raises(SpecError, match="outside"):
            writer.append("c", tokens, ids + 100, lp)
        with pytest.raises(SpecError, match="another process"):
            TopKWriter(tmp_path, K, 100, "h")  # same shard while it is open
    with pytest.raises(SpecError, match="store has"):
        TopKWriter(tmp_path, 4, 100, "h")


def test_reader_pickles_by_reopening(tmp_path):
    rng = np.random.default_rng(5)
    with TopKWriter(tmp_path, K, 300, "h") as writer:
        writer.append("x", *make_record(rng, 7, 300))
    reader = pickle.loads(pickle.dumps(TopKReader(tmp_path)))
    assert "x" in reader and reader.rows("x") == 7 and reader["x"][1].shape == (7, K)
    with pytest.raises(KeyError, match="no record 'y'"):
        reader["y"]


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(words)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=words[0])))


def test_vocab_hash_is_stable_and_mismatch_is_refused():
    a = word_tokenizer(["<unk>", "hello", "world"])
    same = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"world": 2, "<unk>": 0, "hello": 1}, "<unk>"))
    )
    other = word_tokenizer(["<unk>", "world", "hello"])
    assert vocab_hash(a) == vocab_hash(same) != vocab_hash(other)
    check_compatible(vocab_hash(a), same)
    with pytest.raises(SpecError, match="SFT"):
        check_compatible(vocab_hash(a), other)


def test_capture_from_completion_ids_and_refusal(tmp_path):
    positions = [
        TokenTopK(token=7, logprob=-0.1, top=[(7, -0.1), (3, -2.5), (9, -3.0)]),  # fewer than k
        TokenTopK(
            token=4, logprob=-1.5, top=[(2, -0.4), (4, -1.5), (1, -2.0), (5, -4.0), (6, -5.0), (8, -6.0)]
        ),
    ]
    tokens, ids, lp = capture_from_completion(positions, K, context_token=11)
    assert tokens.tolist() == [11, 7, 4]
    assert ids.tolist() == [[7, 3, 9, 0, 0], [2, 4, 1, 5, 6]]
    assert np.isinf(lp[0, 3:]).all() and lp[1].tolist() == pytest.approx([-0.4, -1.5, -2.0, -4.0, -5.0])
    with TopKWriter(tmp_path, K, 12, "h", packed=False) as writer:
        writer.append("gen", tokens, ids, lp)
    assert np.array_equal(TopKReader(tmp_path)["gen"][1], ids)
    strings = [TokenTopK(token="hi", logprob=-0.1, top=[("hi", -0.1)])]
    with pytest.raises(SpecError, match="token strings.*SFT"):
        capture_from_completion(strings, K)


def test_a_damaged_complete_index_line_is_not_taken_for_a_torn_tail(tmp_path):
    rng = np.random.default_rng(6)
    with TopKWriter(tmp_path, K, 300, "h") as writer:
        for key in ("a", "b"):
            writer.append(key, *make_record(rng, 5, 300))
    index = tmp_path / "shard-00000.idx"
    index.write_bytes(b"garbage\n" + index.read_bytes().split(b"\n", 1)[1])
    with pytest.raises(
        SpecError, match=r"shard-00000.idx:1: not valid JSON .*; a damaged index line: restore"
    ):
        TopKReader(tmp_path)
    with pytest.raises(SpecError, match="damaged index line"):
        TopKWriter(tmp_path, K, 300, "h")  # and nothing after it is cut away
    assert index.read_bytes().count(b"\n") == 2


def test_confident_rows_keep_the_mass_outside_the_top1_precisely(tmp_path):
    """The tail bucket needs log(1 - p1); the top-1 is coded as its logit, so that stays precise."""
    rng = np.random.default_rng(7)
    complement = np.exp(rng.uniform(np.log(1e-6), np.log(0.5), size=400))  # 1 - p1 from 1e-6 to 0.5
    lp = np.full((400, K), -np.inf, dtype=np.float32)
    lp[:, 0] = np.log1p(-complement)
    lp[:, 1] = np.log(complement / 2)
    ids = np.tile(np.arange(K, dtype=np.int32), (400, 1))
    with TopKWriter(tmp_path, K, 1000, "h") as writer:
        writer.append("r", np.zeros(401, dtype=np.int32), ids, lp)
    got = TopKReader(tmp_path)["r"][2].astype(np.float64)
    got_complement = -np.expm1(got[:, 0])
    assert np.abs(np.log(got_complement) - np.log(complement)).max() <= 2.0**-9 + 1e-6
    assert (np.abs(got[:, 0] - lp[:, 0]) <= 2.0**-9 * complement + 1e-7).all()
    assert np.abs(got[:, 1] - lp[:, 1]).max() <= PACKED_BOUND_NATS
    with TopKWriter(tmp_path / "one", K, 1000, "h") as writer:  # p1 = 1 exactly: within 1.2e-7 of it
        writer.append("r", [0, 1], [[1, 2, 3, 4, 5]], [[0.0, -20.0, -np.inf, -np.inf, -np.inf]])
    assert -1.2e-7 <= TopKReader(tmp_path / "one")["r"][2][0, 0] <= 0


def test_prompt_digests_and_keys_as_record_ids(tmp_path):
    rng = np.random.default_rng(8)
    with TopKWriter(tmp_path, K, 300, "h") as writer:
        writer.append(3104, *make_record(rng, 4, 300), prompt_ids=[5, 6, 7])  # an int id is stored as "3104"
        writer.append("b", *make_record(rng, 4, 300))
        assert 3104 in writer and "3104" in writer
    reader = TopKReader(tmp_path)
    assert reader.keys() == ["3104", "b"] and 3104 in reader and reader[3104][1].shape == (4, K)
    assert reader.prompt_digest(3104) == prompt_digest([5, 6, 7]) != prompt_digest([5, 6, 8])
    assert reader.prompt_digest("b") is None


def test_a_store_of_the_previous_format_is_refused_with_what_to_do(tmp_path):
    with TopKWriter(tmp_path, K, 300, "h") as writer:
        writer.append("a", *make_record(np.random.default_rng(9), 3, 300))
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"topk-shards/2", b"topk-shards/1"))
    with pytest.raises(SpecError, match="another version.*capture the teacher's top-k again"):
        TopKReader(tmp_path)
