"""`topk_capture`: fill FIRST's top-k store (trainers/first/topk_store.py) from a teacher behind any provider
that can score token ids: vLLM's completions API with `prompt_logprobs`, or the local provider.

Each input record is a TRL prompt/completion row (`id`, `prompt`, `completion`; messages or plain text),
tokenised with the student's tokenizer exactly as the FIRST trainer will (trainers/first/tokens.py). The
ids go to the teacher as they are; for every completion token the k best entries (by the server's rank)
are kept. With `mode = "generate"` the teacher writes the completion instead (chat, with log-probs as
token ids) and its generated tokens are stored.

The store is `<out>/<stage>/topk/`, keyed by str(record id), one shard per --shard. A record is written to
the store before its journal line: after a crash in between, resuming reuses the stored rows (no request,
no second copy), so the journal's answers and the store always hold the same records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field

from engine.digest import files_digest, tokenizer_files
from engine.errors import Fatal, SpecError
from engine.journal import SPACE_ERRORS, disk_full
from engine.providers.base import Api
from engine.types import ChatRequest, Record, TokenTopK, WorkItem
from generators.base import LLM, Generator, GeneratorConfig, register

TOKEN_CHECK = 64  # completion tokens per record whose teacher-decoded text is compared with ours


class TopKCaptureConfig(GeneratorConfig):
    # in the work key by its bytes (the fingerprint), not its path: a moved folder is no new work
    tokenizer: str = Field(
        "",
        description='the student\'s tokenizer: a model folder (relative to the spec); "" = bundled SmolLM2',
        exclude=True,
    )
    k: int = Field(5, ge=1, le=20, description="entries kept per token (vLLM's --max-logprobs is 20)")
    mode: Literal["score", "generate"] = Field(
        "score", description="score: teacher-force the record's completion; generate: the teacher writes it"
    )
    packed: bool = Field(True, description="the packed store encoding (else raw: int32 ids, fp16 log-probs)")
    vocab_size: int | None = Field(
        None,
        ge=2,
        description="largest teacher id + 1; default: the folder's config.json, else the tokenizer",
    )


@register
class TopKCapture(Generator):
    name = "topk_capture"
    Config = TopKCaptureConfig
    config: TopKCaptureConfig

    def __init__(self, config: TopKCaptureConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        if self.stage.samples != 1:
            raise ValueError("samples: topk_capture stores one set of rows per record; use samples = 1")
        self.folder = (self.base_dir / config.tokenizer).resolve() if config.tokenizer else None
        self.tokenizer_id = _tokenizer_fingerprint(self.folder)
        self._tokenizer: Any = None
        self._writer: Any = None
        self._stored: Any = None  # the store as it was when the stage opened: rows to reuse on resume
        self.store_dir: Path | None = None

    # ---- the work -----------------------------------------------------------------------------
    def check(self, record: Record) -> None:
        need = ("prompt",) if self.config.mode == "generate" else ("prompt", "completion")
        missing = [f for f in need if f not in record]
        if missing:
            raise SpecError(
                f"stage {self.stage.name!r}: input record {record.get('id')!r} has no {missing[0]!r}; "
                "topk_capture reads TRL prompt/completion rows ({id, prompt, completion})"
            )
        if self.config.mode == "generate" and not isinstance(record["prompt"], list):
            raise SpecError(
                f"stage {self.stage.name!r}: mode = 'generate' needs prompts as lists of messages"
            )

    def api(self, provider: str) -> Api:
        return "completions" if self.config.mode == "score" else "chat"

    def fingerprint(self, record: Record) -> Any:
        # k, mode and the teacher are in the stage's answer settings (engine/keys.py); the tokenizer here, by
        # its bytes (a changed chat template is new work, a moved folder is not)
        return [self.tokenizer_id, record["prompt"], record.get("completion")]

    def stats(self, kept: Any) -> dict[str, Any]:
        scored = reused = 0
        for record in kept:  # streamed: memory stays flat
            info = record.get("topk") or {}
            scored += info.get("tokens", 0)
            reused += bool(info.get("reused"))
        return {"scored_tokens": scored, "reused": reused}

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        if self._writer is None:
            raise SpecError(f"stage {self.stage.name!r}: the store is not open (open_outputs was not called)")
        record, key = item.record, str(item.record["id"])
        if self.config.mode == "generate":
            return await self._generated(record, key, llm)
        prompt, completion = self._ids(record)
        if self._reuse(key, prompt, completion):
            return self._fields(prompt, completion, reused=True)
        answer = await llm(
            ChatRequest(
                messages=[], params={"prompt_logprobs": self.config.k}, prompt_ids=prompt + completion
            )
        )
        positions = (answer.prompt_logprobs or [])[len(prompt) :]
        if len(positions) != len(completion) or any(p is None for p in positions):
            raise Fatal(f"record {key!r}: the teacher returned no log-probs for some completion tokens")
        self._check_teacher_tokenizer(positions)
        self._store(key, prompt, positions)
        return self._fields(prompt, completion)

    async def _generated(self, record: Record, key: str, llm: LLM) -> Record:
        """The teacher answers the prompt; its generated tokens (ids, with their top-k) are the rows."""
        from trainers.first.tokens import prompt_completion_ids

        if key in self._stored:  # stored before a crash, not journaled: the text is the stored ids decoded
            tokens = [int(t) for t in self._stored[key][0][1:]]
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
            prompt, _ = prompt_completion_ids(self._tokenizer, record["prompt"], _answer(text))
            self._check_prompt(key, prompt)
            return {"completion": _answer(text), **self._fields(prompt, tokens, reused=True)}
        params = {**self.stage.params, "logprobs": True, "top_logprobs": self.config.k}
        answer = await llm(
            ChatRequest(record["prompt"], params, extra_body={"return_tokens_as_token_ids": True})
        )
        if not answer.logprobs:
            raise Fatal("the teacher's answer has no log-probs; it cannot fill a top-k store", stop_run=True)
        prompt, _ = prompt_completion_ids(self._tokenizer, record["prompt"], _answer(answer.text))
        self._store(key, prompt, answer.logprobs)
        generated = [int(p.token) for p in answer.logprobs]
        return {"completion": _answer(answer.text), **self._fields(prompt, generated)}

    def _ids(self, record: Record) -> tuple[list[int], list[int]]:
        from trainers.first.tokens import prompt_completion_ids

        try:
            prompt, completion = prompt_completion_ids(
                self._tokenizer, record["prompt"], record["completion"]
            )
        except SpecError as exc:
            raise SpecError(f"record {record['id']!r}: {exc}") from None
        if not prompt or not completion:
            raise SpecError(f"record {record['id']!r}: tokenises to an empty prompt or completion")
        return prompt, completion

    def _store(self, key: str, prompt: list[int], positions: list[TokenTopK]) -> None:
        from trainers.first.topk_store import capture_from_completion

        try:
            tokens, ids, lps = capture_from_completion(positions, self.config.k, context_token=prompt[-1])
        except SpecError as exc:  # token strings instead of ids: every record would fail the same way
            raise Fatal(str(exc), stop_run=True) from None
        # no await between the append and the return: the journal line follows unless the process dies
        try:
            self._writer.append(key, tokens, ids, lps, prompt_ids=prompt)
        except OSError as exc:  # a full disk stops the run like a journal write would; the item stays pending
            if exc.errno in SPACE_ERRORS:
                raise disk_full(self.store_dir, exc) from None
            raise

    def _reuse(self, key: str, prompt: list[int], completion: list[int]) -> bool:
        """True when the store already holds this record for these ids (a crash before its journal line)."""
        if key in self._stored:
            stored = [int(t) for t in self._stored[key][0][1:]]
            if stored != completion:
                raise SpecError(self._stale(key))
            self._check_prompt(key, prompt)
            return True
        if key in self._writer:
            raise SpecError(f"record {key!r}: scored twice in one run (are record ids unique?)")
        return False

    def _check_prompt(self, key: str, prompt: list[int]) -> None:
        from trainers.first.topk_store import prompt_digest

        digest = self._stored.prompt_digest(key)
        if digest is not None and digest != prompt_digest(prompt):
            raise SpecError(self._stale(key))

    def _stale(self, key: str) -> str:
        return (
            f"record {key!r} is already in {self.store_dir} with other token ids (the record, the tokenizer "
            "or its chat template changed since it was captured); capture into a new `out` folder or "
            f"delete {self.store_dir}"
        )

    def _check_teacher_tokenizer(self, positions: list[TokenTopK]) -> None:
        """vLLM says how it decodes each id it was sent: a teacher with another vocabulary decodes our ids
        into other text. Byte fragments (which decode to U+FFFD) are skipped."""
        checked = differ = 0
        example = ""
        for pos in positions[:TOKEN_CHECK]:
            if pos.text is None:
                continue
            ours = self._tokenizer.decode([int(pos.token)])
            if "\ufffd" in ours or "\ufffd" in pos.text:
                continue
            checked += 1
            if ours.strip() != pos.text.strip():
                differ += 1
                example = example or f"id {pos.token} is {pos.text!r} to the teacher, {ours!r} to the student"
        if checked >= 8 and differ > checked / 2:
            from trainers.first.topk_store import SHARED_TOKENIZER_HINT

            raise Fatal(
                f"the teacher decodes the student's token ids into other text ({example}); "
                f"{SHARED_TOKENIZER_HINT}",
                stop_run=True,
            )

    def _fields(self, prompt: list[int], completion: list[int], reused: bool = False) -> Record:
        info = {"tokens": len(completion), "prompt_tokens": len(prompt), "store": f"{self.stage.name}/topk"}
        return {"topk": {**info, "reused": True} if reused else info}

    # ---- the store, one writer per shard ------------------------------------------------------
    def open_outputs(self, stage_dir: Path, shard: int, settings: Any) -> None:
        from trainers.first.topk_store import TopKReader, TopKWriter, vocab_hash

        self._load_tokenizer()
        self.store_dir = stage_dir / "topk"
        self._writer = TopKWriter(
            self.store_dir,
            self.config.k,
            self._vocab_size(),
            vocab_hash(self._tokenizer),
            packed=self.config.packed,
            shard=shard,
        )
        self._stored = TopKReader(self.store_dir)  # after the writer cut its shard's torn tail
        try:
            self._claim(settings)
        except SpecError:
            self.close_outputs()
            raise

    def _claim(self, settings: Any) -> None:
        """A store holds one version of each record, so one set of answer settings (the teacher's model and
        parameters, k, mode, ...): the first run records them in the manifest; a run under other settings
        (whose work keys all changed: new work) is refused instead of mixing or reusing another teacher's
        rows. The tokenizer is not part of them: each reused record's ids are checked."""
        from trainers.first.topk_store import update_manifest

        blob = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        mine = hashlib.sha256(blob).hexdigest()[:16]
        have = self._stored.manifest.get("capture_settings")
        if have == mine:
            return
        if have is None and not len(self._stored):
            update_manifest(self.store_dir, capture_settings=mine)
            return
        raise SpecError(
            f"stage {self.stage.name!r}: {self.store_dir} was captured with other settings (the teacher's "
            "model or parameters, k, mode or the stage's params changed since); a store keeps one "
            f"version of each record: capture into a new `out` folder, or delete {self.store_dir} to "
            "capture again"
        )

    def close_outputs(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._stored = None

    def _load_tokenizer(self) -> None:
        if self._tokenizer is not None:
            return
        from transformers import AutoTokenizer

        from trainers.base_model import resolve_base_model

        folder = self.folder or resolve_base_model("")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise SpecError(
                f"stage {self.stage.name!r}: tokenizer {str(folder)!r}: cannot load ({exc})"
            ) from None
        self._tokenizer_folder = Path(folder)

    def _vocab_size(self) -> int:
        """Ids the store must hold: the model's logits width when the folder says (a padded embedding can
        exceed the tokenizer), at least the tokenizer's own size."""
        if self.config.vocab_size:
            return self.config.vocab_size
        size = len(self._tokenizer)
        config = self._tokenizer_folder / "config.json"
        if config.is_file():
            text_config = orjson.loads(config.read_bytes())
            text_config = text_config.get("text_config", text_config)
            size = max(size, int(text_config.get("vocab_size") or 0))
        return size


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _tokenizer_fingerprint(folder: Path | None) -> str:
    """What identifies the tokenisation, without loading it: the bundled one by name, a folder by the
    bytes of its tokenizer files (a changed chat template is new work)."""
    if folder is None:
        return "bundled-smollm2"
    present = tokenizer_files(folder)
    if not present:
        raise ValueError(f"tokenizer: {folder} holds no tokenizer files (tokenizer.json, ...)")
    return files_digest(present)[:16]
