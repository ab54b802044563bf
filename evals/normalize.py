"""Text normalisation for the diagnosis answer schema: split `diseases` / `reason` strings into items
and bring items to a canonical form so that formatting differences do not count as errors."""

from __future__ import annotations

import re
from collections.abc import Callable

from filters.format import NUMBER_MARK, strip_numbering

# Full-width ASCII (U+FF01..U+FF5E) maps onto ASCII by a fixed offset; U+3000 is the ideographic space.
_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}

# List numbers follow the one rule of filters/format.py (`1.` `2、` `(3)` `④` `一、` ...; never `36.7℃`).
_LEADING_NUMBER = re.compile(rf"^\s*{NUMBER_MARK}\s*")
# Where a new numbered point starts inside one line: at the start, or after a point terminator.
_POINT_START = re.compile(rf"(?<=[；;。])\s*(?={NUMBER_MARK})")
_DISEASE_SEPARATORS = set("；;、,，|\n")
_POINT_TERMINATORS = "；;。.，,、 \t"
_QUALIFIER = re.compile(r"[(（][^()（）]*[)）]|[\[【][^\[\]【】]*[\]】]")
_SPACES = re.compile(r"\s+")

# The official submission joins reason points with the two characters backslash + n.
LITERAL_NEWLINE = "\\n"


def to_halfwidth(text: str) -> str:
    """Full-width Latin letters, digits and punctuation (`（１级）`, `；`) to their ASCII forms."""
    return text.translate(_FULLWIDTH)


def strip_terminator(item: str) -> str:
    """Drop trailing point terminators (`；`, `。`, `,` ...) and spaces."""
    return item.rstrip(_POINT_TERMINATORS).strip()


def remove_qualifiers(name: str) -> str:
    """Remove parenthetical qualifiers: `原发性高血压（1级）` -> `原发性高血压`."""
    previous = None
    while previous != name:  # nested brackets come off from the inside out
        previous, name = name, _QUALIFIER.sub("", name)
    return name.strip()


def split_diseases(text: str) -> list[str]:
    """Split a diseases string (`1. A；2. B`, `A|B`, `A、B`) into names, keeping qualifiers whole:
    a separator inside brackets (`高血压（1级，高危）`) does not split."""
    items, current, depth = [], [], 0
    for char in text:
        if char in "(（[【":
            depth += 1
        elif char in ")）]】":
            depth = max(depth - 1, 0)
        if char in _DISEASE_SEPARATORS and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    names = (strip_terminator(strip_numbering(item)) for item in items)
    return [name for name in names if name]


def split_reason(text: str) -> list[str]:
    """Split a reason string into points without numbering or terminators.

    Points are separated by newlines (real ones or the literal backslash-n of the official format)
    or by a new list number after a terminator (`…；2. …`). A single unnumbered line falls back to
    splitting on `；`, so a plain `发热；咳嗽` reads as two points.
    """
    lines = [line for line in text.replace(LITERAL_NEWLINE, "\n").split("\n") if line.strip()]
    chunks = [chunk for line in lines for chunk in _POINT_START.split(line.strip()) if chunk.strip()]
    if len(chunks) == 1 and not _LEADING_NUMBER.match(chunks[0]):
        chunks = re.split(r"[；;]", chunks[0])
    points = (strip_terminator(strip_numbering(chunk)) for chunk in chunks)
    return [point for point in points if point]


def as_items(value: object, splitter: Callable[[str], list[str]], *, field: str) -> list[str]:
    """A field given as a string (split with `splitter`) or a list of strings (one item each,
    numbering and terminators stripped) as a list of items; None is an empty answer."""
    if value is None:
        return []
    if isinstance(value, str):
        return splitter(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = (strip_terminator(strip_numbering(item)) for item in value)
        return [item for item in items if item]
    raise ValueError(f"field {field!r} must be a string or a list of strings, got {type(value).__name__}")


def canonical(text: str) -> str:
    """The form two items are compared in: half-width, lower-case, no whitespace."""
    return _SPACES.sub("", to_halfwidth(text).lower())


def normalize_disease(name: str, *, drop_qualifiers: bool = True) -> str:
    """Canonical disease name; with `drop_qualifiers`, `多囊卵巢综合征（PCOS）` == `多囊卵巢综合征`.
    A name that is only a qualifier (`（PCOS）`) keeps its text rather than becoming empty."""
    text = canonical(strip_terminator(strip_numbering(to_halfwidth(name))))
    if drop_qualifiers:
        text = remove_qualifiers(text) or text
    return text


def same_diseases(a: list[str], b: list[str]) -> bool:
    """Equal as sets of normalised names (numbering, width, qualifiers and order do not count): the one
    rule for "the same diagnosis" (two-stage corrections, preference pairs, DPO pair agreement)."""
    return {normalize_disease(x) for x in a} == {normalize_disease(x) for x in b}


def normalize_point(point: str) -> str:
    """Canonical reason point (also used for the patient record when measuring grounding)."""
    return canonical(strip_terminator(strip_numbering(to_halfwidth(point))))
