"""What every provider kind offers the engine. Providers know nothing of limits or retries:
they make one request and translate failures into engine.errors classes."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from engine.types import ChatRequest, Completion

# What a stage sends its provider: chat messages, or token ids to the completions API (teacher forcing).
Api = Literal["chat", "completions"]


class ProviderConfig(BaseModel):
    """Keys shared by every `[providers.NAME]` table; each kind subclasses it."""

    model_config = ConfigDict(extra="forbid")
    # keys naming local files: a relative path is resolved from the spec's folder when the spec loads
    path_fields: ClassVar[tuple[str, ...]] = ()

    kind: str
    model: str = ""
    rpm: float | None = None  # requests per minute; None = unlimited
    tpm: float | None = None  # tokens per minute; None = unlimited
    max_concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 6
    params: dict[str, Any] = {}  # default sampling params (temperature, max_tokens, ...)
    extra_body: dict[str, Any] = {}  # passed through untouched
    chars_per_token: float | None = None  # token estimate when no tokenizer is known
    price_in: float = 0.0  # cost per 1M prompt tokens
    price_out: float = 0.0  # cost per 1M completion tokens

    # The keys that change an answer: part of every work key, so changing one is new work. The others
    # (rates, concurrency, timeouts, retries, prices, estimates) never are. A kind adds its own.
    answer_fields: ClassVar[tuple[str, ...]] = ("model", "params", "extra_body")

    def answer_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.answer_fields}


class Provider:
    kind: ClassVar[str] = ""
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig

    def __init__(self, name: str, config: ProviderConfig, *, cache_dir: Any = None):
        self.name = name
        self.config = config
        self.cache_dir = cache_dir

    async def complete(self, request: ChatRequest) -> Completion:
        """One answer; a `prompt_ids` request (teacher forcing) only where the kind supports it."""
        raise NotImplementedError

    async def preflight(self, api: Api = "chat") -> Completion | None:
        """One cheap request to the API the run's stages will use (`api`: chat messages, or completions of
        token ids), its answer, for the run's ledger, when there is one; raise errors.Fatal(stop_run=True)
        with a clear message on failure."""

    def account(self) -> str | None:
        """Who the provider counts rate limits against, as a stable hash (never the key itself): the
        processes of a shared limiter that name the same account share one limit. None: no account
        (an in-process model), so each process limits itself."""
        return None

    def estimate_tokens(self, request: ChatRequest) -> int:
        """Prompt tokens plus the max_tokens asked for, before the call (reconciled afterwards)."""
        if request.prompt_ids is not None:  # teacher forcing: the ids are the prompt, one token comes back
            return len(request.prompt_ids) + 1
        chars = sum(len(m.get("content") or "") for m in request.messages)
        ratio = self.config.chars_per_token or 1.5  # CJK-heavy text runs ~1-1.5 chars per token
        max_tokens = request.params.get("max_tokens") or self.config.params.get("max_tokens") or 256
        return int(chars / ratio) + 4 * len(request.messages) + int(max_tokens)

    async def aclose(self) -> None:
        pass
