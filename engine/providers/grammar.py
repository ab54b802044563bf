"""Constrained decoding for the local provider: turns a request's `response_format` (OpenAI shape) or
`guided_json` (vLLM shape) into an xgrammar grammar, and masks each batch row's logits to it.

xgrammar matchers are single-use, so every generate() call gets fresh ones (see GrammarRows).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from engine.errors import Fatal

if TYPE_CHECKING:  # xgrammar (and torch) load only when a model does: request parsing needs neither
    import torch
    import xgrammar as xgr

ANY_JSON = "<any json>"  # the key for `{"type": "json_object"}`


def grammar_key(params: dict[str, Any], extra_body: dict[str, Any]) -> str | None:
    """The canonical JSON schema text (or ANY_JSON) a request asks for; None when unconstrained."""
    guided = extra_body.get("guided_json")
    if guided is not None:
        return _schema_text(guided, "extra_body.guided_json")
    fmt = params.get("response_format")
    if not fmt:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_JSON
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        if "schema" not in spec:
            raise Fatal("local provider: response_format.json_schema needs a `schema` key")
        return _schema_text(spec["schema"], "response_format.json_schema.schema")
    raise Fatal(
        f"local provider: response_format.type {kind!r} is not supported; use 'text', 'json_object' "
        "or 'json_schema'"
    )


def _schema_text(schema: Any, where: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise Fatal(f"local provider: {where} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise Fatal(f"local provider: {where} must be a JSON object (a JSON schema)")
    return json.dumps(schema, ensure_ascii=False)  # key order kept: it fixes the output order


class GrammarCompiler:
    """Compiles (and remembers) grammars for one tokenizer; ~0.2 s for a small schema."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int], threads: int = 2):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=max(1, threads))
        self._compiled: dict[str, xgr.CompiledGrammar] = {}

    def compile(self, key: str) -> xgr.CompiledGrammar:
        if key not in self._compiled:
            try:
                if key == ANY_JSON:
                    grammar = self._compiler.compile_builtin_json_grammar()
                else:
                    # any_whitespace=False: otherwise a small model can pad with whitespace forever.
                    grammar = self._compiler.compile_json_schema(key, any_whitespace=False)
            except Exception as exc:
                detail = " ".join(str(exc).split())  # xgrammar's messages span lines
                raise Fatal(f"local provider: JSON schema does not compile: {detail}") from exc
            self._compiled[key] = grammar
        return self._compiled[key]


class GrammarRows:
    """Fresh matchers for one generate() call; rows without a grammar are left alone."""

    def __init__(self, grammars: list[xgr.CompiledGrammar | None], vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.vocab_size = vocab_size
        self._bitmask = (
            xgr.allocate_token_bitmask(len(grammars), vocab_size)
            if any(m is not None for m in self.matchers)
            else None
        )

    def constrained(self, rows: list[int]) -> list[int]:
        return [i for i in rows if self.matchers[i] is not None and not self.matchers[i].is_terminated()]

    def mask(self, scores: torch.Tensor, rows: list[int]) -> None:
        """Set the logits of tokens each row's grammar forbids next to -inf, in place."""
        rows = self.constrained(rows)
        if not rows:
            return
        for i in rows:
            self.matchers[i].fill_next_token_bitmask(self._bitmask, i)
        xgr = self._xgr
        if scores.device.type == "cuda":
            xgr.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device), indices=rows)
        else:
            xgr.apply_token_bitmask_inplace(scores, self._bitmask, vocab_size=self.vocab_size, indices=rows)

    def accept(self, row: int, token: int) -> None:
        matcher = self.matchers[row]
        if matcher is not None and not matcher.is_terminated() and not matcher.accept_token(token):
            raise RuntimeError(f"grammar rejected token {token} it allowed")  # an xgrammar bug, not input
