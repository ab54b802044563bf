"""The `engine runs` table: one row per run, fitted into a terminal's width.

Numbers are right-aligned with one precision per column. When the table is too wide, in this order:
columns with the same value in every run (and overrides every run shares) move to a footer; then, if it
still does not fit with its text columns cut to 12 characters, long statistic names are abbreviated (with
a legend), a long run name is cut, and the least useful columns are hidden. The text columns share what
is left (cut with `…`). Every step is said below the table; `--json` has everything.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from typing import Any

from engine.overrides import split_item

TEXT = ("note", "overrides", "description", "models")  # shortened to fit; hidden last-first
HIDE = ("rejected", "failed", "date", "stage", "models", "kept")  # hidden in this order to make room
MIN_TEXT = 12  # a text column narrower than this is hidden rather than cut
NAME_MAX = 20
SIGNED = {"delta"}


def format_table(rows: list[dict[str, Any]], width: int = 120) -> str:
    if not rows:
        return "no runs found"
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    columns = [c for c in columns if any(row.get(c) not in (None, "", []) for row in rows)]
    columns = [c for c in columns if c not in TEXT] + [c for c in TEXT if c in columns]
    cells = {c: _cells(c, [row.get(c) for row in rows]) for c in columns}
    table = _Table(columns, cells, width)
    footer: list[str] = []
    if not table.fits(cut=False) and len(rows) > 1:
        same = [f"{c} {cells[c][0]}" for c in columns if c != "name" and len(set(cells[c])) == 1]
        table.remove([c for c in columns if c != "name" and len(set(cells[c])) == 1])
        if "overrides" in table.columns:  # an override every run shares says nothing about the difference
            shared = set.intersection(*(set(row.get("overrides") or []) for row in rows))
            left = [[item for item in row.get("overrides") or [] if item not in shared] for row in rows]
            cells["overrides"] = _cells("overrides", left)
            same += [f"overrides {_short_key(item)}" for item in sorted(shared)]
        if same:
            footer.append("same in every run: " + ", ".join(same))
    if not table.fits():
        table.headers.update(_abbreviations(table.columns, cells))
    if not table.fits():
        table.limit["name"] = NAME_MAX
    hidden = [c for c in HIDE if c in table.columns and not table.fits() and table.remove([c])]
    while not table.fits() and any(c in TEXT for c in table.columns):
        last = [c for c in table.columns if c in TEXT][-1]
        table.remove([last])
        hidden.append(last)
    legend = [f"{table.headers[c]} = {c}" for c in table.columns if table.headers[c] != c]
    if legend:
        footer.append("columns: " + ", ".join(legend))
    if hidden:
        footer.append(
            f"hidden to fit {width} characters: {', '.join(hidden)} (--width N or --json shows them)"
        )
    lines = table.render()
    for note in footer:
        lines += textwrap.wrap(note, width=width, subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


class _Table:
    def __init__(self, columns: list[str], cells: dict[str, list[str]], width: int):
        self.columns = list(columns)
        self.cells = cells
        self.width = width
        self.headers = {c: c for c in columns}
        self.limit: dict[str, int] = {}  # column -> most characters shown

    def remove(self, columns: list[str]) -> bool:
        self.columns = [c for c in self.columns if c not in columns]
        return True

    def natural(self, column: str) -> int:
        wanted = max(display_width(self.headers[column]), *(display_width(v) for v in self.cells[column]))
        return min(wanted, self.limit.get(column, wanted))

    def widths(self) -> dict[str, int] | None:
        """Each column's width, or None when even the text columns at MIN_TEXT do not fit."""
        fixed = [c for c in self.columns if c not in TEXT]
        text = [c for c in self.columns if c in TEXT]
        room = self.width - sum(self.natural(c) for c in fixed) - 2 * (len(self.columns) - 1)
        if room < 0:
            return None
        widths = {c: self.natural(c) for c in fixed} | _share(room, {c: self.natural(c) for c in text})
        return widths if all(widths[c] >= min(MIN_TEXT, self.natural(c)) for c in text) else None

    def fits(self, cut: bool = True) -> bool:
        """Whether the table fits, with text columns cut (`cut`) or whole."""
        if not cut:
            return sum(map(self.natural, self.columns)) + 2 * (len(self.columns) - 1) <= self.width
        return self.widths() is not None

    def render(self) -> list[str]:
        widths = self.widths() or {c: self.natural(c) for c in self.columns}
        numeric = {c for c in self.columns if c not in TEXT and c not in ("name", "date", "stage")}

        def line(values: list[str]) -> str:
            parts = []
            for c, value in zip(self.columns, values, strict=True):
                text = clip(value, widths[c])
                pad = " " * (widths[c] - display_width(text))
                parts.append(pad + text if c in numeric else text + pad)
            return "  ".join(parts).rstrip()

        lines = [line([self.headers[c] for c in self.columns])]
        for i in range(len(self.cells[self.columns[0]])):
            lines.append(line([self.cells[c][i] for c in self.columns]))
        return lines


def _cells(column: str, values: list[Any]) -> list[str]:
    """Numbers with one precision per column (the fewest decimals, up to 3, that show every value)."""
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    decimals = max((len(f"{v:.3f}".rstrip("0").partition(".")[2]) for v in numbers), default=0)
    out = []
    for value in values:
        if value is None:
            out.append("-")
        elif isinstance(value, list):
            out.append(" ".join(map(_short_key, value) if column == "overrides" else map(str, value)))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(f"{value:{'+' if column in SIGNED else ''}.{decimals}f}")
        else:
            out.append(str(value))
    return out


def _short_key(item: str) -> str:
    """`stages.predict.k=6` -> `predict.k=6`: an override's last two key parts say what changed."""
    key, value = split_item(str(item))  # recorded by `engine run --set`, so well formed
    return ".".join(key.split(".")[-2:]) + "=" + value


def _share(room: int, wanted: dict[str, int]) -> dict[str, int]:
    """Split `room` characters among text columns: narrow ones get what they need, wide ones the rest."""
    given: dict[str, int] = {}
    left = dict(wanted)
    while left:
        fair = max(0, room - sum(given.values())) // len(left)
        narrow = {c: w for c, w in left.items() if w <= fair}
        if not narrow:
            return given | {c: fair for c in left}
        given.update(narrow)
        for c in narrow:
            del left[c]
    return given


def _abbreviations(columns: list[str], cells: dict[str, list[str]]) -> dict[str, str]:
    """Shorter names for number columns wider than their values: `mean_reason_chars` -> `reas_char` (a
    leading `mean_` dropped, words over 5 letters cut to 4); kept only where no two columns would collide."""
    short = {}
    for c in columns:
        if c in TEXT or c == "name" or display_width(c) <= max(display_width(v) for v in cells[c]):
            continue
        words = re.split(r"([_.])", c.removeprefix("mean_"))
        abbreviated = "".join(word[:4] if len(word) > 5 else word for word in words)
        if abbreviated != c:
            short[c] = abbreviated
    taken = [*short.values(), *(c for c in columns if c not in short)]
    return {c: s for c, s in short.items() if taken.count(s) == 1}


def display_width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def clip(text: str, width: int) -> str:
    """`text` cut to `width` terminal columns, ending in `…` when cut."""
    if display_width(text) <= width:
        return text
    out, used = "", 0
    for ch in text:
        if used + display_width(ch) > width - 1:
            break
        out, used = out + ch, used + display_width(ch)
    return out + "…"
