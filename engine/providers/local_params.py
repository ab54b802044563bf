"""Turns OpenAI chat parameters (plus vLLM-style extra_body keys) into the local provider's per-request
decoding params, refusing what it cannot honour instead of silently ignoring it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import Fatal

# Keys read here; `response_format` / `guided_json` are read by grammar.grammar_key.
PARAM_KEYS = {
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop",
    "logprobs", "top_logprobs", "response_format", "n",
}  # fmt: skip
EXTRA_KEYS = {"top_k", "guided_json", "return_tokens_as_token_ids"}  # ids: what local always returns
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass
class GenParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy; OpenAI's default is 1
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # a seeded request samples the same text whatever shares its batch
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: Any = None  # an xgrammar CompiledGrammar, set by the worker


def gen_params(params: dict[str, Any], extra_body: dict[str, Any], default_max_tokens: int) -> GenParams:
    """`params`/`extra_body` already merged (provider defaults, then the request's)."""
    _refuse_unknown(params, PARAM_KEYS, "params")
    _refuse_unknown(extra_body, EXTRA_KEYS, "extra_body")
    if params.get("n") not in (None, 1):
        raise Fatal("local provider: params.n must be 1; ask for more samples as separate requests")
    max_tokens = params.get("max_tokens") or params.get("max_completion_tokens") or default_max_tokens
    temperature = _number(params, "temperature", 1.0)
    top_p = _number(params, "top_p", 1.0)
    if temperature < 0 or not 0 < top_p <= 1:
        raise Fatal(f"local provider: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    top_logprobs = int(params.get("top_logprobs") or 0)
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise Fatal(f"local provider: params.top_logprobs must be 0..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
    stop = params.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)
    seed = params.get("seed")
    return GenParams(
        max_tokens=int(max_tokens),
        temperature=temperature,
        top_p=top_p,
        top_k=max(int(extra_body.get("top_k") or 0), 0),  # vLLM's -1 = off
        seed=int(seed) if seed is not None else None,
        stop=stop,
        logprobs=bool(params.get("logprobs")) or top_logprobs > 0,
        top_logprobs=top_logprobs,
    )


def _number(params: dict[str, Any], key: str, default: float) -> float:
    value = params.get(key)
    return default if value is None else float(value)


def _refuse_unknown(values: dict[str, Any], known: set[str], where: str) -> None:
    # A key left at a neutral value (0, None, False, "") changes nothing, so it may pass.
    unknown = sorted(k for k, v in values.items() if k not in known and v not in (None, 0, False, "", [], {}))
    if unknown:
        raise Fatal(
            f"local provider: {where} {', '.join(unknown)} not supported; "
            f"supported: {', '.join(sorted(known))}"
        )
