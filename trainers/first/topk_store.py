"""Binary, sharded, memory-mapped storage of a teacher's top-k next-token distributions (FIRST targets).

A directory holds `manifest.json` plus, per writer shard I, `shard-0000I.bin` (fixed-width rows, one per
scored token) and `shard-0000I.idx` (one JSON line per record: key, byte offset, row count, context token).

Alignment of a record (key -> token_ids[T+1], ids[T, k], logprobs[T, k]):
  token_ids[0] is the context token (the last prompt token, -1 when unknown) and token_ids[1:] are the T
  scored tokens. Row j is the teacher's distribution over token_ids[j + 1] given the prompt and
  token_ids[1..j]: the causal-LM logits layout, where the output at position j predicts token j + 1.
  Entries are best first; an absent entry (fewer than k returned) has logprob -inf.

Encodings (bytes per scored token at k=5, plus the index: ~0.3 at 300-token records and 32-char keys):
  raw:    token id (uint16 if vocab <= 65536 else uint32) + k int32 ids + k float16 logprobs: 32 / 34 bytes;
          round-trips bit for bit what was written (log-probs are stored as float16).
  packed: token id and k ids at ceil(log2 vocab) bits each, the top-1 as a 13-bit code of its logit
          log(p1 / (1 - p1)) (step 2^-8, within +-16) and the other k-1 as 9-bit gaps below the decoded
          top-1 (step 2^-5 nats), rows bit-concatenated per record: 18.1 bytes at a 49k vocabulary, 19.6 at
          152k. Rows are sorted best first on write. Bound (PACKED_BOUND_NATS): |decoded - true| <= 2^-6
          nats (0.0156, plus 1e-6 of float32 rounding) for every entry within CLAMP_NATS (15.94) of the row's
          top. The top-1's own log-prob is within 2^-9 (1 - p1) and log(1 - p1), the mass outside it that the
          tail bucket needs, within 2^-9 p1: precise on confident rows too. An entry further below the top
          decodes at about top - 15.94 (probability at most 1.2e-7 of the top-1's, never below the true one);
          a top-1 logit beyond +-16 (p1 < 1.1e-7 or 1 - p1 < 1.1e-7) is clamped there; -inf round-trips.

Each index line may carry `prompt`, a digest of the record's full prompt ids (prompt_digest), so a trainer
can refuse an example whose prompt differs from the one the teacher saw.

Crash safety: a record's rows are written and flushed before its index line, so a record is visible only
once complete; a torn index line or data bytes past the last indexed record are a torn tail, dropped by
the next writer on that shard (readers ignore them without touching files).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.atomic import write_json_atomic
from engine.errors import SpecError
from engine.jsonl import jsonl_lines
from engine.types import TokenTopK

FORMAT = "topk-shards/2"  # /1 coded the top-1 log-prob itself: imprecise where p1 is near 1
MANIFEST = "manifest.json"
TOP_BITS, TOP_STEP = 13, 2.0**-8  # top-1 logit = TOP_LOGIT_MAX - code * step, code < TOP_NONE
TOP_LOGIT_MAX = 16.0
GAP_BITS, GAP_STEP = 9, 2.0**-5  # others = decoded top-1 - code * step, code < GAP_NONE
TOP_NONE, GAP_NONE = (1 << TOP_BITS) - 1, (1 << GAP_BITS) - 1  # the all-ones code means -inf (absent)
PACKED_BOUND_NATS = (
    GAP_STEP / 2 + 1e-6
)  # worst |decoded - true| within CLAMP_NATS of the top (+fp32 rounding)
CLAMP_NATS = (GAP_NONE - 1) * GAP_STEP  # 15.94; further below is clamped to about there
SHARED_TOKENIZER_HINT = (
    "token-level distillation (FIRST) needs teacher and student to share one tokenizer; "
    "distil this teacher with SFT on its generated text instead (python -m engine train sft)"
)

Record = tuple[np.ndarray, np.ndarray, np.ndarray]


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def vocab_hash(tokenizer: Any) -> str:
    """Stable hash of a tokenizer's token -> id mapping (added tokens included)."""
    pairs = sorted(((int(i), str(t)) for t, i in tokenizer.get_vocab().items()))
    return "sha256:" + hashlib.sha256(orjson.dumps(pairs)).hexdigest()


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    """A short, stable digest of a record's full prompt ids (int32 little-endian, sha256)."""
    return hashlib.sha256(np.asarray(prompt_ids, dtype="<i4").tobytes()).hexdigest()[:16]


def check_compatible(teacher_hash: str, student_tokenizer: Any) -> None:
    """Refuse a student whose tokenizer differs from the one the teacher's token ids refer to."""
    student_hash = vocab_hash(student_tokenizer)
    if student_hash != teacher_hash:
        raise SpecError(
            f"teacher tokenizer (vocab {teacher_hash[:19]}) differs from the student's "
            f"(vocab {student_hash[:19]}): {SHARED_TOKENIZER_HINT}"
        )


def capture_from_completion(logprobs: Sequence[TokenTopK], k: int, context_token: int = -1) -> Record:
    """A provider's generated tokens with their top-k (ids, not strings) -> (token_ids, ids, logprobs)."""
    ids = np.zeros((len(logprobs), k), dtype=np.int32)
    lps = np.full((len(logprobs), k), -np.inf, dtype=np.float32)
    tokens = [context_token]
    for j, pos in enumerate(logprobs):
        if isinstance(pos.token, str) or any(isinstance(t, str) for t, _ in pos.top):
            raise SpecError(
                f"position {j}: the provider returned token strings, not token ids ({pos.token!r}); "
                f"use a provider that returns ids (local, or vLLM with return_tokens_as_token_ids), "
                f"else {SHARED_TOKENIZER_HINT}"
            )
        tokens.append(int(pos.token))
        best = sorted(pos.top, key=lambda t: -t[1])[:k]
        ids[j, : len(best)] = [int(t) for t, _ in best]
        lps[j, : len(best)] = [float(lp) for _, lp in best]
    return np.asarray(tokens, dtype=np.int32), ids, lps


class _Codec:
    """Encodes a record's rows of (token, ids[k], logprobs[k]) into bytes and back."""

    def __init__(self, k: int, vocab_size: int, packed: bool):
        self.k, self.vocab_size, self.packed = k, vocab_size, packed
        self.id_bits = max(1, (vocab_size - 1).bit_length())
        if self.id_bits > 24:
            raise SpecError(f"vocab_size {vocab_size}: at most 2^24 token ids are supported")
        if packed:  # rows are concatenated bit streams: a record pads only its last byte
            self.row_bits = (k + 1) * self.id_bits + TOP_BITS + (k - 1) * GAP_BITS
        else:
            tok = "<u2" if vocab_size <= 1 << 16 else "<u4"
            self.dtype = np.dtype([("tok", tok), ("ids", "<i4", (k,)), ("lp", "<f2", (k,))])
            self.row_bits = 8 * self.dtype.itemsize

    def nbytes(self, rows: int) -> int:
        return (rows * self.row_bits + 7) // 8

    def encode(self, tokens: np.ndarray, ids: np.ndarray, lps: np.ndarray) -> bytes:
        if not self.packed:
            rows = np.empty(len(tokens), dtype=self.dtype)
            rows["tok"], rows["ids"], rows["lp"] = tokens, ids, lps.astype(np.float16)
            return rows.tobytes()
        order = np.argsort(-lps, axis=1, kind="stable")  # best first: gaps below the top are >= 0
        ids, lps = np.take_along_axis(ids, order, 1), np.take_along_axis(lps, order, 1)
        top = lps[:, 0].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # -inf (absent) and 0 (p1 = 1) are coded apart
            code = np.clip(np.rint((TOP_LOGIT_MAX - _logit(top)) / TOP_STEP), 0, TOP_NONE - 1)
        top_code = np.where(np.isinf(top), TOP_NONE, np.where(top >= 0, 0, code))
        gap = _top_logprob(top_code)[:, None] - lps[:, 1:]  # below the decoded top: errors do not add up
        gap_code = np.where(np.isinf(gap), GAP_NONE, np.clip(np.rint(gap / GAP_STEP), 0, GAP_NONE - 1))
        fields = [(np.column_stack([tokens, ids]), self.id_bits), (top_code[:, None], TOP_BITS)]
        bits = [_to_bits(v.astype(np.uint64), w) for v, w in [*fields, (gap_code, GAP_BITS)]]
        return np.packbits(np.concatenate(bits, axis=1).ravel(), bitorder="little").tobytes()

    def decode(self, buf: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.packed:
            rows = np.frombuffer(buf.tobytes(), dtype=self.dtype, count=n)
            return rows["tok"].astype(np.int32), rows["ids"].astype(np.int32), rows["lp"].astype(np.float32)
        w, k = self.id_bits, self.k
        bits = np.unpackbits(buf, count=n * self.row_bits, bitorder="little").reshape(n, self.row_bits)
        all_ids = _from_bits(bits[:, : (k + 1) * w].reshape(n, k + 1, w)).astype(np.int32)
        top_code = _from_bits(bits[:, (k + 1) * w : (k + 1) * w + TOP_BITS])
        gap_code = _from_bits(bits[:, (k + 1) * w + TOP_BITS :].reshape(n, k - 1, GAP_BITS))
        top = _top_logprob(top_code)
        rest = np.where(gap_code == GAP_NONE, -np.inf, top[:, None] - gap_code * GAP_STEP)
        return all_ids[:, 0], all_ids[:, 1:], np.column_stack([top, rest]).astype(np.float32)


def _logit(logprob: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) from log p, accurate near p = 1 (log1mexp) and for tiny p alike."""
    complement = np.where(logprob > -np.log(2), np.log(-np.expm1(logprob)), np.log1p(-np.exp(logprob)))
    return logprob - complement


def _top_logprob(code: np.ndarray) -> np.ndarray:
    """The top-1 log-prob a code stands for: -softplus(-logit), computed without overflow."""
    logit = TOP_LOGIT_MAX - code.astype(np.float64) * TOP_STEP
    out = np.minimum(logit, 0) - np.log1p(np.exp(-np.abs(logit)))
    return np.where(code == TOP_NONE, -np.inf, out)


def _to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """[n, f] unsigned -> [n, f * width] bits, least significant first."""
    shifts = np.arange(width, dtype=np.uint64)
    return ((values[..., None] >> shifts) & 1).astype(np.uint8).reshape(len(values), -1)


def _from_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of _to_bits; a float32 product (BLAS, exact below 2^24) is ~5x faster than int64."""
    weights = np.exp2(np.arange(bits.shape[-1], dtype=np.float32))
    return (bits.astype(np.float32) @ weights).astype(np.int64)


def _read_index(path: Path) -> tuple[list[dict], int]:
    """Complete index lines and the byte length they cover. Only the part after the last newline can be
    torn by a crash (one write per line); a complete line that does not parse is damage, not a tail."""
    if not path.exists():
        return [], 0
    entries, covered = [], 0
    with open(path, "rb") as f:
        for line in jsonl_lines(
            f, path, tail="wait", advice="a damaged index line: restore the shard or re-score it"
        ):
            entries.append(line.record)
            covered = line.offset + len(line.raw)
    return entries, covered


def _load_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.exists():
        raise SpecError(f"{directory}: no {MANIFEST}; not a top-k store (write one with TopKWriter)")
    manifest = orjson.loads(path.read_bytes())
    if manifest.get("format") != FORMAT:
        raise SpecError(
            f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; this store was written by "
            "another version of the engine: capture the teacher's top-k again into a new folder"
        )
    return manifest


def update_manifest(directory: str | Path, **fields: Any) -> dict:
    """Set fields of a store's manifest (e.g. the calibrated c), written atomically."""
    directory = Path(directory)
    manifest = {**_load_manifest(directory), **fields}
    _write_manifest(directory, manifest)
    return manifest


def _write_manifest(directory: Path, manifest: dict) -> None:
    write_json_atomic(directory / MANIFEST, manifest)  # readers see the old or the new manifest, never half


class TopKWriter:
    """Appends records to one shard of a store; reopening an existing shard drops its torn tail."""

    def __init__(
        self,
        directory: str | Path,
        k: int,
        vocab_size: int,
        vocab_hash: str,
        packed: bool = True,
        shard: int = 0,
        fsync: bool = False,
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.codec, self.fsync = _Codec(k, vocab_size, packed), fsync
        wanted = {"format": FORMAT, "encoding": "packed" if packed else "raw", "k": k}
        wanted |= {"vocab_size": vocab_size, "vocab_hash": vocab_hash, "row_bits": self.codec.row_bits}
        if (self.dir / MANIFEST).exists():
            have = _load_manifest(self.dir)
            diff = {f: (have.get(f), v) for f, v in wanted.items() if have.get(f) != v}
            if diff:
                raise SpecError(f"{self.dir / MANIFEST}: store has {diff} (have, asked); use another dir")
        else:
            _write_manifest(self.dir, {**wanted, "id_bits": self.codec.id_bits, "calibration": None})
        base = self.dir / shard_name(shard)
        self._idx = open(base.with_suffix(".idx"), "ab+")  # noqa: SIM115 - held for the writer's life
        try:
            fcntl.flock(self._idx, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"{base}: another process is writing this shard; give each writer its own --shard"
            raise SpecError(msg) from None
        try:
            entries, good = _read_index(base.with_suffix(".idx"))
        except SpecError:
            self._idx.close()
            raise
        self._idx.truncate(good)
        self.keys = {e["key"] for e in entries}
        end = max((e["offset"] + self.codec.nbytes(e["rows"]) for e in entries), default=0)
        self._bin = open(base.with_suffix(".bin"), "ab")  # noqa: SIM115
        self._bin.truncate(end)
        self._offset = end
        self._failed: OSError | None = None  # a write that failed half way: the shard's tail is torn

    def __contains__(self, key: object) -> bool:
        return str(key) in self.keys

    def append(
        self,
        key: str,
        token_ids: Any,
        topk_ids: Any,
        topk_logprobs: Any,
        prompt_ids: Sequence[int] | None = None,
    ) -> None:
        """Write one record; `prompt_ids` (the full prompt the teacher saw) are kept as a digest."""
        key = str(key)
        tokens = np.asarray(token_ids, dtype=np.int64)
        ids, lps = np.asarray(topk_ids, dtype=np.int64), np.asarray(topk_logprobs, dtype=np.float32)
        self._validate(key, tokens, ids, lps)
        if self._failed is not None:  # appending after a torn tail would misplace every later record
            raise OSError(self._failed.errno, self._failed.strerror)
        entry = {"key": key, "offset": self._offset, "rows": len(ids), "ctx": int(tokens[0])}
        if prompt_ids is not None:
            entry["prompt"] = prompt_digest(prompt_ids)
        try:
            self._bin.write(self.codec.encode(tokens[1:], ids, lps))
            self._bin.flush()
            if self.fsync:
                os.fsync(self._bin.fileno())
            self._idx.write(orjson.dumps(entry) + b"\n")
            self._idx.flush()
            if self.fsync:
                os.fsync(self._idx.fileno())
        except OSError as exc:  # e.g. a full disk: the record is not stored; the next writer cuts the tail
            self._failed = exc
            raise
        self._offset += self.codec.nbytes(len(ids))
        self.keys.add(key)

    def _validate(self, key: str, tokens: np.ndarray, ids: np.ndarray, lps: np.ndarray) -> None:
        k, vocab = self.codec.k, self.codec.vocab_size
        where = f"{self.dir}: record {key!r}"
        if key in self.keys:
            raise SpecError(f"{where} is already stored; check `key in writer` before appending (resume)")
        if ids.ndim != 2 or ids.shape[1] != k or lps.shape != ids.shape or len(tokens) != len(ids) + 1:
            raise SpecError(
                f"{where}: expected token_ids[T+1], ids[T,{k}], logprobs[T,{k}]; got "
                f"{tokens.shape}, {ids.shape}, {lps.shape}"
            )
        scored = tokens[1:]
        if ids.size and (min(ids.min(), scored.min()) < 0 or max(ids.max(), scored.max()) >= vocab):
            raise SpecError(f"{where}: token ids outside [0, {vocab}) (context token may be -1)")
        if not -1 <= tokens[0] < vocab or np.isnan(lps).any() or (lps > 1e-3).any():
            raise SpecError(f"{where}: log-probs must be <= 0 and not NaN; context token >= -1")

    def close(self) -> None:
        for f in (self._bin, self._idx):  # the index last: closing it releases the lock
            try:
                f.close()
            except OSError:
                if self._failed is None:
                    raise  # after a failed write, the buffered rest cannot go either: the file closes anyway

    def __enter__(self) -> TopKWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TopKReader:
    """Random access by key over every shard of a store; rows are read straight from np.memmap views."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.manifest = _load_manifest(self.dir)
        m = self.manifest
        self.codec = _Codec(m["k"], m["vocab_size"], m["encoding"] == "packed")
        self.k, self.vocab_size, self.vocab_hash = m["k"], m["vocab_size"], m["vocab_hash"]
        self._maps: list[np.ndarray | None] = []
        self._index: dict[str, tuple[int, int, int, int, str | None]] = {}
        for shard, idx_path in enumerate(sorted(self.dir.glob("shard-*.idx"))):
            entries, _ = _read_index(idx_path)
            bin_path = idx_path.with_suffix(".bin")
            size = bin_path.stat().st_size if bin_path.exists() else 0
            self._maps.append(np.memmap(bin_path, dtype=np.uint8, mode="r") if size else None)
            for e in entries:
                if e["key"] in self._index:
                    raise SpecError(f"{idx_path}: key {e['key']!r} also stored in another shard")
                if e["offset"] + self.codec.nbytes(e["rows"]) > size:
                    raise SpecError(f"{bin_path}: record {e['key']!r} runs past the end (damaged shard)")
                self._index[e["key"]] = (shard, e["offset"], e["rows"], e["ctx"], e.get("prompt"))

    def __getitem__(self, key: object) -> Record:
        key = str(key)  # stores are keyed by str(record id)
        try:
            shard, offset, rows, ctx, _ = self._index[key]
        except KeyError:
            raise KeyError(f"{self.dir}: no record {key!r}") from None
        view = self._maps[shard][offset : offset + self.codec.nbytes(rows)] if rows else np.empty(0, np.uint8)
        tokens, ids, lps = self.codec.decode(view, rows)
        return np.concatenate([[ctx], tokens]).astype(np.int32), ids, lps

    def __contains__(self, key: object) -> bool:
        return str(key) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def keys(self) -> list[str]:
        return list(self._index)

    def rows(self, key: object) -> int:
        return self._index[str(key)][2]

    def prompt_digest(self, key: object) -> str | None:
        """The digest of the prompt ids the teacher saw for this record (None: not recorded)."""
        return self._index[str(key)][4]

    def __getstate__(self) -> dict:  # dataloader workers reopen the maps instead of pickling them
        return {"dir": self.dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dir"])
