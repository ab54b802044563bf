"""Records which process writes what under a folder, for the multi-process training tests.

Put this folder on PYTHONPATH and set RANK_WRITES_UNDER (the folder watched) and RANK_WRITES_LOG (a folder
for the logs): every process then appends `rank<TAB>event<TAB>path` lines to its own log for each file it
opens for writing, renames, replaces or removes under the watched folder (Python's audit events, so
writes done in native code without Python's `open`, e.g. the safetensors payload, are not seen; the files
Python writes beside them, such as adapter_config.json, are). The rank is torchrun's RANK (0 alone).
"""

import os
import sys

_UNDER = os.environ.get("RANK_WRITES_UNDER")
_LOG = os.environ.get("RANK_WRITES_LOG")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install(under: str, log_dir: str) -> None:
    under = os.path.realpath(under)
    rank = os.environ.get("RANK", "0")
    log = open(os.path.join(log_dir, f"writes-{os.getpid()}.tsv"), "a", buffering=1, encoding="utf-8")

    def watched(path) -> str | None:
        if isinstance(path, int):
            return None
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        return full if full == under or full.startswith(under + os.sep) else None

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            paths = [path] if writes else []
        elif event in ("os.rename", "os.remove", "os.rmdir"):
            paths = list(args[:2]) if event == "os.rename" else [args[0]]
        else:
            return
        for path in paths:
            if (full := watched(path)) is not None:
                log.write(f"{rank}\t{event}\t{full}\n")

    sys.addaudithook(hook)


if _UNDER and _LOG:
    _install(_UNDER, _LOG)
