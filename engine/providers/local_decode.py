"""The local provider's decoding: one batched `model.generate` over requests with different sampling
params, and teacher-forced top-k scoring (the shared scorer, engine/providers/scoring.py, as TokenTopK).

Every row is decoded by RowDecoder, a logits processor that applies that row's grammar, temperature,
top-k/top-p and its own seeded RNG, then hands generate() a one-hot row so generate's greedy step picks
that token. So requests with different params share a batch and a seed reproduces a row's sample
whatever else is in the batch. Log-probs are those of the RAW logits (before temperature, top-p or the
grammar mask), like vLLM's default, computed as top-k(logits) - logsumexp(logits).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria

from engine.providers.grammar import GrammarRows
from engine.providers.local_model import LoadedModel
from engine.providers.local_params import GenParams
from engine.providers.scoring import score_batch, top_entries
from engine.types import TokenTopK


@dataclass
class RowResult:
    token_ids: list[int]  # generated ids, the end-of-sequence token included when it was generated
    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    logprobs: list[TokenTopK] | None


@dataclass
class _Row:
    params: GenParams
    rng: torch.Generator | None
    abandoned: Callable[[], bool]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenTopK] = field(default_factory=list)
    finish: str | None = None


class RowDecoder(LogitsProcessor):
    """Chooses every active row's next token (see the module docstring)."""

    def __init__(self, rows: list[_Row], grammar: GrammarRows, eos_ids: list[int]):
        self.rows, self.grammar, self.eos_ids = rows, grammar, set(eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        active = [i for i, row in enumerate(self.rows) if row.finish is None]
        want = [i for i in active if self.rows[i].params.logprobs]
        raw = scores[want].float() if want else None  # indexing copies: the raw logits survive masking
        self.grammar.mask(scores, active)
        chosen = {i: self._choose(scores[i], self.rows[i]) for i in active}
        if raw is not None:
            k = max(self.rows[i].params.top_logprobs for i in want)
            lse, top_lp, top_ids = top_entries(raw, k)
            for j, i in enumerate(want):
                n = self.rows[i].params.top_logprobs
                top = list(zip(top_ids[j, :n].tolist(), top_lp[j, :n].tolist(), strict=True))
                logprob = (raw[j, chosen[i]] - lse[j]).item()
                self.rows[i].logprobs.append(TokenTopK(token=chosen[i], logprob=logprob, top=top))
        out = torch.full_like(scores, float("-inf"))
        for i, token in chosen.items():
            out[i, token] = 0.0
            self.grammar.accept(i, token)
            self.rows[i].tokens.append(token)
            if token in self.eos_ids:
                self.rows[i].finish = "stop"
        return out

    @staticmethod
    def _choose(logits: torch.Tensor, row: _Row) -> int:
        p = row.params
        if p.temperature <= 0:
            return int(logits.argmax())
        logits = logits.float() / p.temperature
        if 0 < p.top_k < logits.shape[-1]:
            kth = logits.topk(p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the best token)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        return int(torch.multinomial(probs, 1, generator=row.rng))


class RowStopper(StoppingCriteria):
    """Per-row stop: its own max_tokens and stop strings (generate's own limit is the batch maximum)."""

    def __init__(self, rows: list[_Row], tokenizer: Any):
        self.rows, self.tokenizer = rows, tokenizer

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        for row in self.rows:
            if row.finish is not None:
                continue
            if row.abandoned():  # nobody waits for this row any more: free the batch sooner
                row.finish = "length"
            elif row.params.stop and _find_stop(self.tokenizer.decode(row.tokens), row.params.stop) >= 0:
                row.finish = "stop"
            elif len(row.tokens) >= row.params.max_tokens:
                row.finish = "length"
        done = [row.finish is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _find_stop(text: str, stops: tuple[str, ...]) -> int:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def generate_batch(
    lm: LoadedModel,
    prompts: list[list[int]],
    params: list[GenParams],
    abandoned: list[Callable[[], bool]] | None = None,
) -> list[RowResult]:
    """Left-pad the prompts and run one generate() over all of them. `abandoned[i]()` true: row i
    stops at the next step (its caller gave up)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), lm.pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
        attention[i, width - len(prompt) :] = 1
    abandoned = abandoned or [lambda: False] * len(params)
    rows = [_Row(p, _rng(p, lm.device), gone) for p, gone in zip(params, abandoned, strict=True)]
    grammar = GrammarRows([p.grammar for p in params], lm.vocab_size)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(p.max_tokens for p in params),
        eos_token_id=lm.eos_ids,
        pad_token_id=lm.pad_id,
    )
    with torch.inference_mode():
        lm.model.generate(
            input_ids=input_ids.to(lm.device),
            attention_mask=attention.to(lm.device),
            generation_config=config,
            logits_processor=[RowDecoder(rows, grammar, lm.eos_ids)],
            stopping_criteria=[RowStopper(rows, lm.tokenizer)],
        )
    return [_result(row, lm) for row in rows]


def _rng(params: GenParams, device: torch.device) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    rng = torch.Generator(device=device)
    rng.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    return rng


def _result(row: _Row, lm: LoadedModel) -> RowResult:
    text_ids = [t for t in row.tokens if t not in lm.eos_ids]
    text = lm.tokenizer.decode(text_ids, skip_special_tokens=True)
    cut = _find_stop(text, row.params.stop) if row.params.stop else -1
    if cut >= 0:
        text = text[:cut]
    logprobs = row.logprobs if row.params.logprobs else None
    return RowResult(row.tokens, text, row.finish or "length", logprobs)


def score_tokens(lm: LoadedModel, prompt: list[int], completion: list[int], top_k: int) -> list[TokenTopK]:
    """Teacher forcing (engine/providers/scoring.py): row j is the raw-logit distribution over completion
    token j given everything before it."""
    if not completion:
        return []
    scored = score_batch(lm.model, [(prompt, completion)], top_k)[0]
    top_ids, top_lp, chosen = scored.top_ids.tolist(), scored.top_logprobs.tolist(), scored.logprobs.tolist()
    return [
        TokenTopK(token=tok, logprob=chosen[j], top=list(zip(top_ids[j], top_lp[j], strict=True)))
        for j, tok in enumerate(completion)
    ]
