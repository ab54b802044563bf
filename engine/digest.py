"""What identifies a folder's files in a work key: their bytes, not their path (a moved or copied folder
is no new work, a file rewritten in place is)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

# The files a tokenizer is saved as (transformers' save_pretrained): what changes its token ids.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
)  # fmt: skip


def tokenizer_files(folder: Path) -> list[Path]:
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def files_digest(files: Iterable[Path], canonical: Callable[[Path], bytes | None] | None = None) -> str:
    """sha256 (hex) over each file's name and contents, in the order given. `canonical(file)` may give a
    file's contents in a canonical form instead (None: its bytes, read in blocks: adapters are large)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        text = canonical(file) if canonical else None
        if text is not None:
            digest.update(text)
            continue
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
