"""Two answers to the same id, field by field: which items are the same, matched, added or removed.

A comparer is any object with
    name: str
    fields: tuple[str, ...]          the answer fields it knows
    stats: tuple[str, ...]           manifest statistics charted per version (may be empty)
    handles(record) -> bool          whether it fits records like this one
    match(field, a, b) -> (items_a, items_b, [(i, j, score)]) | None
                                     the items of both values and their one-to-one pairs (score 1.0:
                                     the same item), or None to leave the field to the fallback
Task comparers live with their task (the diagnosis schema's in evals/compare.py) and are listed in
COMPARERS; without one, list fields are compared as sets and text with a character/word diff.

A field diff is plain data: {"kind": "items" | "text", "a": [part], "b": [part], "distance": 0..1,
"counts": {"same"|"matched"|"removed"|"added": n}}, a part being {"text", "status", "note"}, status
same | matched | removed (only in a) | added (only in b).
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any

import orjson

COMPARERS = ["evals.compare:DiagnosisComparer"]
NOT_ANSWER = {"id", "meta", "source_id", "key"}  # bookkeeping, never compared
_TOKEN = re.compile(r"[A-Za-z0-9_.%/-]+|\s+|.", re.DOTALL)  # Latin words whole, CJK one character each
_MAX_TOKENS = 4000  # longer texts are compared whole (difflib is quadratic in the worst case)


def part(text: str, status: str, note: str = "") -> dict[str, str]:
    return {"text": text, "status": status, "note": note}


class GenericComparer:
    """For any task: no fields of its own; every differing field goes to `generic_diff`."""

    name = "generic"
    fields: tuple[str, ...] = ()
    stats: tuple[str, ...] = ()

    def handles(self, record: dict[str, Any]) -> bool:
        return True

    def match(self, field: str, a: Any, b: Any) -> None:
        return None


def generic_diff(a: Any, b: Any) -> dict[str, Any]:
    """Lists as sets of their items (as written), everything else as text."""
    if isinstance(a, list | None) and isinstance(b, list | None) and (a or b) is not None:
        return set_diff([_text(x) for x in a or []], [_text(x) for x in b or []])
    return text_diff(_text(a), _text(b))


def set_diff(a: list[str], b: list[str]) -> dict[str, Any]:
    """Items of a and b as sets: each item of a pairs with an equal, not yet paired item of b."""
    free: dict[str, list[int]] = {}
    for j, item in enumerate(b):
        free.setdefault(item, []).append(j)
    pairs = [(i, free[item].pop(0), 1.0) for i, item in enumerate(a) if free.get(item)]
    return items_diff(a, b, pairs)


def items_diff(a: list[str], b: list[str], pairs: list[tuple[int, int, float]]) -> dict[str, Any]:
    """Parts from one-to-one pairs (i, j, score): a pair scoring 1.0 is `same`, a lower one `matched`
    (its note names the score and the partner's position), an item without a pair removed/added."""
    partner_a = {i: (j, s) for i, j, s in pairs}
    partner_b = {j: (i, s) for i, j, s in pairs}

    def paired(text: str, other: int, score: float) -> dict[str, str]:
        return part(text, "same") if score >= 1.0 else part(text, "matched", f"{score:.2f} ↔ {other + 1}")

    parts_a = [paired(x, *partner_a[i]) if i in partner_a else part(x, "removed") for i, x in enumerate(a)]
    parts_b = [paired(x, *partner_b[j]) if j in partner_b else part(x, "added") for j, x in enumerate(b)]
    counts = {"same": 0, "matched": 0, "removed": 0, "added": 0}
    for p in parts_a:
        counts[p["status"]] += 1
    counts["added"] = len(b) - len(pairs)
    # an unpaired item differs wholly; a matched pair by what its score misses, on both sides
    unlike = counts["removed"] + counts["added"] + sum(2 * (1 - s) for _, _, s in pairs)
    distance = unlike / (len(a) + len(b)) if a or b else 0.0
    return {"kind": "items", "a": parts_a, "b": parts_b, "distance": distance, "counts": counts}


def text_diff(a: str, b: str) -> dict[str, Any]:
    """Character diff for CJK, word diff for Latin text: equal runs `same`, the rest removed/added."""
    if a == b:
        return {"kind": "text", "a": [part(a, "same")], "b": [part(b, "same")], "distance": 0.0,
                "counts": {"same": len(a), "matched": 0, "removed": 0, "added": 0}}  # fmt: skip
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    if len(ta) > _MAX_TOKENS or len(tb) > _MAX_TOKENS:
        opcodes = [("replace", 0, len(ta), 0, len(tb))]
    else:
        opcodes = difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes()
    parts_a: list[dict[str, str]] = []
    parts_b: list[dict[str, str]] = []
    counts = {"same": 0, "matched": 0, "removed": 0, "added": 0}
    for op, i1, i2, j1, j2 in opcodes:
        left, right = "".join(ta[i1:i2]), "".join(tb[j1:j2])
        if op == "equal":
            parts_a.append(part(left, "same"))
            parts_b.append(part(right, "same"))
            counts["same"] += len(left)
            continue
        if left:
            parts_a.append(part(left, "removed"))
            counts["removed"] += len(left)
        if right:
            parts_b.append(part(right, "added"))
            counts["added"] += len(right)
    total = len(a) + len(b)
    distance = (counts["removed"] + counts["added"]) / total if total else 0.0
    return {"kind": "text", "a": parts_a, "b": parts_b, "distance": distance, "counts": counts}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def load_comparers() -> list[Any]:
    """The task comparers that import (a missing task package is skipped), then the generic one."""
    found: list[Any] = []
    for ref in COMPARERS:
        module, _, attr = ref.partition(":")
        try:
            found.append(getattr(importlib.import_module(module), attr)())
        except (ImportError, AttributeError):
            continue
    return [*found, GenericComparer()]


def choose(comparers: list[Any], sample: dict[str, Any] | None) -> Any:
    """The first comparer that handles records like `sample` (the generic one handles any)."""
    for comparer in comparers:
        if sample is None or comparer.handles(sample):
            return comparer
    return comparers[-1]


def compare_records(comparer: Any, a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Field -> diff for the comparer's fields present on either side and every other field that
    differs; fields equal on both sides and not the comparer's are left out (the caller shows them)."""
    names = [f for f in comparer.fields if f in a or f in b]
    names += [f for f in {**a, **b} if f not in NOT_ANSWER and f not in names and a.get(f) != b.get(f)]
    out = {}
    for field in names:
        value = a.get(field)
        if isinstance(value, list) and value == b.get(field) and all(isinstance(v, str) for v in value):
            out[field] = items_diff(value, value, [(i, i, 1.0) for i in range(len(value))])  # fast: the same
            continue
        matched = comparer.match(field, value, b.get(field)) if field in comparer.fields else None
        out[field] = items_diff(*matched) if matched is not None else generic_diff(a.get(field), b.get(field))
    return out


def distance(diffs: dict[str, dict[str, Any]]) -> float:
    """How much two answers differ, 0 to 1: the share of differing items (characters for text),
    averaged over the compared fields."""
    return round(sum(d["distance"] for d in diffs.values()) / len(diffs), 4) if diffs else 0.0
