"""The embedded `local` provider: a transformers causal LM run in-process (default: the bundled
SmolLM2-135M-Instruct GGUF, converted once and cached), with the openai provider's request and
response shape, JSON-schema constrained decoding and teacher-forced top-k scoring (`score()`, and a
ChatRequest with `prompt_ids`, answered like vLLM's `prompt_logprobs`).

All model work happens on one worker thread (local_worker.py), so the event loop never blocks:
concurrent complete() calls queue up and the worker runs up to `batch_size` of them in one generate().
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from engine.digest import files_digest, tokenizer_files
from engine.errors import EngineError, Fatal
from engine.providers.base import Api, Provider, ProviderConfig
from engine.providers.grammar import grammar_key
from engine.providers.local_params import gen_params
from engine.providers.local_worker import BatchWorker, Job
from engine.types import ChatRequest, Completion, TokenTopK, Usage


class LocalConfig(ProviderConfig):
    path_fields: ClassVar[tuple[str, ...]] = ("model", "adapter")

    kind: Literal["local"] = "local"
    model: str = Field(
        "", description='"" = bundled SmolLM2-135M-Instruct; else an HF folder or a .gguf file'
    )
    adapter: str = Field("", description="a LoRA (peft) adapter folder merged on top of the model")
    batch_size: int = Field(8, ge=1, description="most requests run in one generate() call")
    batch_wait_s: float = Field(0.01, ge=0, description="how long the worker waits to fill a batch")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    max_new_tokens: int = Field(256, ge=1, description="max_tokens when neither request nor params set it")
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads; None = torch's default")
    device: Literal["cpu", "cuda", "auto"] = "auto"

    answer_fields: ClassVar[tuple[str, ...]] = (
        *ProviderConfig.answer_fields,
        "adapter",
        "dtype",
        "max_new_tokens",
    )

    def answer_settings(self) -> dict[str, Any]:
        settings = super().answer_settings()
        if self.adapter:  # what the adapter is, not where: an adapter retrained in place is new work
            settings["adapter"] = adapter_digest(Path(self.adapter).expanduser()) or self.adapter
        return settings


def adapter_digest(folder: Path) -> str | None:
    """A hash of what in an adapter folder changes its answers: weights, LoRA settings, tokenizer and chat
    template (not the summaries, plots or checkpoints training writes beside them); None before any."""
    files = [*sorted(f for f in folder.glob("adapter_*") if f.is_file()), *tokenizer_files(folder)]
    if not files:
        return None
    return "sha256:" + files_digest(files, canonical=_lora_settings)[:24]


def _lora_settings(config: Path) -> bytes | None:
    """adapter_config.json as settings: peft writes its module lists in set order (another order each
    save) and the base model's path (keyed apart, as the provider's `model`). None for other files."""
    if config.name != "adapter_config.json":
        return None
    try:
        settings = orjson.loads(config.read_bytes())
    except orjson.JSONDecodeError:
        return config.read_bytes()
    for name in ("base_model_name_or_path", "peft_version"):
        settings.pop(name, None)
    canonical = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
                 for k, v in settings.items()}  # fmt: skip
    return orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)


# transformers' lazy imports are not thread-safe: two local providers loading at once in their worker
# threads (a run preflights every provider together) can see a half-imported module (ImportError).
_LOAD_LOCK = threading.Lock()


class LocalProvider(Provider):
    kind = "local"
    Config = LocalConfig

    def __init__(self, name: str, config: LocalConfig, *, cache_dir: Any = None):
        super().__init__(name, config, cache_dir=cache_dir)
        self.config: LocalConfig = config
        self._lm: Any = None  # LoadedModel, set by the worker thread
        self._grammars: Any = None
        self._worker = BatchWorker(
            self._handle,
            batched_kind="generate",
            batch_size=config.batch_size,
            wait_s=config.batch_wait_s,
            name=f"local-provider-{name}",
        )
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # generate() calls by batch size

    # --- public API -------------------------------------------------------------------------------

    async def preflight(self, api: Api = "chat") -> None:
        """Load (converting the GGUF on first use); raises Fatal(stop_run=True) with a one-line reason.
        The model serves both APIs, so `api` changes nothing."""
        await self._worker.submit("load")

    async def complete(self, request: ChatRequest) -> Completion:
        start = time.perf_counter()
        params = {**self.config.params, **request.params}
        if request.prompt_ids is not None:  # teacher forcing, as vLLM's prompt_logprobs: one forward pass
            ids = [int(t) for t in request.prompt_ids]
            rows = await self.score(ids[:1], ids[1:], int(params.get("prompt_logprobs") or 0), add_eos=False)
            return Completion(
                text="",
                finish_reason="length",
                usage=Usage(prompt_tokens=len(ids)),
                model=self._lm.name,
                latency_s=time.perf_counter() - start,
                prompt_logprobs=[None, *rows],
            )
        extra = {**self.config.extra_body, **request.extra_body}
        payload = {
            "messages": request.messages,
            "params": gen_params(params, extra, self.config.max_new_tokens),
            "grammar": grammar_key(params, extra),
        }
        prompt_len, row = await self._worker.submit("generate", payload)
        return Completion(
            text=row.text,
            finish_reason=row.finish_reason,
            usage=Usage(prompt_tokens=prompt_len, completion_tokens=len(row.token_ids)),
            model=self._lm.name,
            latency_s=time.perf_counter() - start,
            logprobs=row.logprobs,
        )

    async def score(
        self,
        prompt: list[int] | list[dict[str, str]],
        completion: str | list[int],
        top_k: int = 5,
        *,
        add_eos: bool | None = None,
    ) -> list[TokenTopK]:
        """Teacher-forced top-k log-probs (raw logits) at every completion position, one forward pass.

        `prompt`: chat messages (rendered with the generation prompt) or token ids as-is.
        `completion`: text (tokenised without special tokens; the end-of-sequence token is appended
        unless add_eos=False, so the stop decision is scored too) or token ids as-is (add_eos=True appends).
        Row j is the distribution over completion token j.
        """
        if top_k < 0:
            raise Fatal(f"local provider: score top_k must be >= 0, got {top_k}")
        payload = {"prompt": prompt, "completion": completion, "top_k": top_k, "add_eos": add_eos}
        return await self._worker.submit("score", payload)

    def estimate_tokens(self, request: ChatRequest) -> int:
        """Real prompt tokens once the model is loaded (after preflight); the base estimate before."""
        if self._lm is None or request.prompt_ids is not None:
            return super().estimate_tokens(request)
        params = {**self.config.params, **request.params}
        max_tokens = (
            params.get("max_tokens") or params.get("max_completion_tokens") or self.config.max_new_tokens
        )
        return len(self._render(request.messages)) + int(max_tokens)

    @property
    def loaded(self) -> Any:
        """The LoadedModel (model, tokenizer, eos ids) once preflight or a request loaded it, else None.
        For tools and tests: touch the model only while no request is in flight."""
        return self._lm

    async def aclose(self) -> None:
        await self._worker.close()

    # --- on the worker thread ----------------------------------------------------------------------------

    def _handle(self, jobs: list[Job]) -> None:
        try:
            self._ensure_loaded()
        except Exception as exc:  # every waiting caller learns why
            error = exc if isinstance(exc, Fatal) else _as_engine_error(exc, "cannot load the model")
            if isinstance(error, Fatal):
                error.stop_run = True
            for job in jobs:
                job.future.set_exception(error)
            return
        for job in jobs:
            if job.kind != "generate":
                try:
                    job.future.set_result(self._score(job.payload) if job.kind == "score" else None)
                except Exception as exc:
                    job.future.set_exception(_as_engine_error(exc, f"{job.kind} failed"))
        self._generate([job for job in jobs if job.kind == "generate"])

    def _ensure_loaded(self) -> None:
        if self._lm is not None:
            return
        with _LOAD_LOCK:
            self._load()

    def _load(self) -> None:
        import torch

        from engine.providers.grammar import GrammarCompiler
        from engine.providers.local_model import load_model

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        cache = Path(self.cache_dir) if self.cache_dir is not None else None
        lm = load_model(
            self.config.model,
            self.config.adapter,
            cache_dir=cache,
            dtype=self.config.dtype,
            device=self.config.device,
        )
        self._grammars = GrammarCompiler(lm.tokenizer, lm.vocab_size, lm.eos_ids, torch.get_num_threads())
        self._lm = lm

    def _score(self, p: dict[str, Any]) -> list[TokenTopK]:
        from engine.providers.local_decode import score_tokens

        prompt = (
            self._render(p["prompt"])
            if p["prompt"] and isinstance(p["prompt"][0], dict)
            else list(p["prompt"])
        )
        completion = p["completion"]
        add_eos = p["add_eos"] if p["add_eos"] is not None else isinstance(completion, str)
        if isinstance(completion, str):
            with self._tokenizer_lock:
                completion = self._lm.tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion = list(completion) + ([self._lm.eos_ids[0]] if add_eos else [])
        if not prompt:
            raise Fatal("local provider: score needs a non-empty prompt")
        self._check_context(len(prompt), len(completion))
        return score_tokens(self._lm, prompt, completion, p["top_k"])

    def _generate(self, jobs: list[Job]) -> None:
        from engine.providers.local_decode import generate_batch

        ready, prompts, params = [], [], []
        for job in jobs:  # a bad request fails alone, not its batch
            try:
                prompt = self._render(job.payload["messages"])
                gp = job.payload["params"]
                self._check_context(len(prompt), gp.max_tokens)
                if job.payload["grammar"] is not None:
                    gp.grammar = self._grammars.compile(job.payload["grammar"])
            except Exception as exc:
                job.future.set_exception(_as_engine_error(exc, "cannot prepare the request"))
                continue
            ready.append(job), prompts.append(prompt), params.append(gp)
        if not ready:
            return
        self.batch_sizes[len(ready)] += 1
        try:
            results = generate_batch(self._lm, prompts, params, [job.abandoned.is_set for job in ready])
        except Exception as exc:
            for job in ready:
                job.future.set_exception(_as_engine_error(exc, "generation failed"))
            return
        for job, prompt, row in zip(ready, prompts, results, strict=True):
            job.future.set_result((len(prompt), row))

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tokenizer_lock:
            ids = self._lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _check_context(self, prompt_len: int, new_tokens: int) -> None:
        limit = self._lm.max_context
        if limit and prompt_len + new_tokens > limit:
            raise Fatal(
                f"local provider: prompt ({prompt_len} tokens) + max_tokens ({new_tokens}) exceeds the "
                f"model's context of {limit} tokens; shorten the prompt or lower max_tokens",
                status=400,
            )


def _as_engine_error(exc: Exception, what: str) -> Exception:
    """Engine errors pass as they are; anything else (a template error, out of memory) becomes a Fatal
    for this request: the same input would fail the same way on a retry."""
    if isinstance(exc, EngineError):
        return exc
    detail = " ".join(str(exc).split())  # one line, whatever the library wrote
    return Fatal(f"local provider: {what}: {type(exc).__name__}: {detail}")
