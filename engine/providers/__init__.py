"""Provider registry: `kind` -> Provider class, and building a provider from a `[providers.NAME]` table.

Kinds are registered by import path and imported only when used, so importing this package never
pulls in torch (the `local` kind) or the openai SDK.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.errors import SpecError
from engine.providers.base import Provider, ProviderConfig
from engine.spec_errors import SpecErrors

_KINDS: dict[str, str | type[Provider]] = {
    "openai": "engine.providers.openai:OpenAIProvider",
    "local": "engine.providers.local:LocalProvider",
}


def register(kind: str, target: str | type[Provider]) -> None:
    """Add a provider kind: a Provider subclass, or "module.path:ClassName" imported on first use."""
    _KINDS[kind] = target


def kinds() -> list[str]:
    return sorted(_KINDS)


def provider_class(kind: str) -> type[Provider]:
    target = _KINDS.get(kind)
    if target is None:
        raise KeyError(kind)
    if isinstance(target, str):
        module_name, _, class_name = target.partition(":")
        target = getattr(importlib.import_module(module_name), class_name)
        _KINDS[kind] = target
    return target


def validate_config(name: str, table: dict[str, Any]) -> ProviderConfig:
    """Check one `[providers.NAME]` table against its kind's Config; SpecError names the bad key."""
    where = f"providers.{name}"
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise SpecError(f"{where}.kind: expected one of {', '.join(kinds())}, got {kind!r}")
    cls = provider_class(kind)
    try:
        return cls.Config.model_validate(table)
    except ValidationError as exc:
        fields = tuple(cls.Config.model_fields)  # a table built in code: no file to name
        raise SpecErrors().from_validation(exc, prefix=("providers", name), fields=fields) from None


def build_provider(name: str, table: dict[str, Any], cache_dir: str | Path | None = None) -> Provider:
    """Validate `table` and construct the provider (reads API keys from the environment)."""
    config = validate_config(name, table)
    return provider_class(config.kind)(name, config, cache_dir=cache_dir)
