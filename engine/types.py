"""The few types every part of the engine shares: requests, completions, work items."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class TokenTopK:
    """One generated (or scored) position: the chosen token and the teacher's top-k, best first.

    `token` / `top` entries are token ids when the provider returns them (vLLM with
    `return_tokens_as_token_ids` or prompt log-probs, the local provider), else token strings. `text` is
    the chosen token as the server decoded it, when it says (vLLM's `decoded_token`).
    """

    token: int | str
    logprob: float
    top: list[tuple[int | str, float]]
    text: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatRequest:
    """What a generator asks of a provider. `params` are OpenAI chat parameters
    (temperature, max_tokens, top_p, seed, stop, response_format, logprobs, top_logprobs);
    `extra_body` is passed through untouched (vLLM's top_k, guided_json, ...).

    With `prompt_ids` (and no messages) it is a teacher-forcing request instead: score these token ids
    as they are, with `params = {"prompt_logprobs": k}`; the answer's `prompt_logprobs` holds the top-k at
    every position. Providers that can (openai against vLLM's completions API, local) say so in
    docs/providers.md; the others refuse it."""

    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    prompt_ids: list[int] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    latency_s: float = 0.0
    logprobs: list[TokenTopK] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # one entry per prompt id of a `prompt_ids` request: None for the first, then the distribution over
    # prompt_ids[t] given prompt_ids[:t] (top-k best first, plus the actual token when it ranks lower)
    prompt_logprobs: list[TokenTopK | None] | None = None


@dataclass
class WorkItem:
    """One unit of work of a stage: a record, a sample index and what makes it unique.

    `fingerprint` is everything that changes the answer (messages, params, prompt files);
    the item's key hashes it with the stage name, record id and sample index.
    """

    record: Record
    sample: int = 0
    fingerprint: Any = None
    context: dict[str, Any] = field(default_factory=dict)
