"""The filter contract: a filter takes a record and keeps it or drops it with a reason.

A filter returns True (keep) or (False, reason). It may normalise the record in place
(the chain hands it a record it owns). Stateful filters (dedupe) see records in a
deterministic commit order: input order within a round, never completion order.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

FilterResult = bool | tuple[bool, str]


class FilterConfig(BaseModel):
    """Options of one filter in a stage's chain; each filter subclasses this."""

    model_config = ConfigDict(extra="forbid")


class Filter:
    """Subclass, set `name` and `Config`, implement `__call__`."""

    name: ClassVar[str] = "filter"
    Config: ClassVar[type[FilterConfig]] = FilterConfig

    def __init__(self, config: FilterConfig | None = None, *, base_dir: Any = None):
        self.config = config or self.Config()
        self.base_dir = base_dir  # folder relative paths in the config are read from

    def __call__(self, record: dict[str, Any]) -> FilterResult:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Extra figures for `engine status` (e.g. decisions the boilerplate core changed)."""
        return {}


REGISTRY: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    REGISTRY[cls.name] = cls
    return cls


def filter_class(kind: str) -> type[Filter]:
    import filters  # noqa: F401  (registers the built-in filters)

    if kind not in REGISTRY:
        raise ValueError(f"unknown filter {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind]


def filter_config(kind: str, options: dict[str, Any]) -> FilterConfig:
    """Validate a spec table without building the filter (raises ValueError / ValidationError)."""
    return filter_class(kind).Config.model_validate(options)


def build_filter(kind: str, options: dict[str, Any], *, base_dir: Any = None) -> Filter:
    """Build a registered filter from a spec table; unknown kinds raise ValueError."""
    return filter_class(kind)(filter_config(kind, options), base_dir=base_dir)
