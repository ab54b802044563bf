"""An async engine that generates, filters and distils training data from teacher LLMs."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """Versions that change results, for the run manifest."""
    from importlib import metadata  # here, not at import: `python -m engine` starts faster

    found = {"engine": __version__, "python": platform.python_version()}
    for package in ("openai", "transformers", "torch", "trl", "peft", "rapidfuzz"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found
