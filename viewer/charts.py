"""Small inline SVG line charts, one per statistic across runs (no JavaScript, no network)."""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 300, 150
LEFT, RIGHT, TOP, BOTTOM = 48, 26, 36, 34


def small_multiples(
    rows: list[dict[str, Any]],
    keys: list[str],
    marked: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
) -> str:
    """One chart per key over the rows (x: run names, oldest first); marked runs are drawn bold and
    labelled with their value. Keys no row has a number for are left out."""
    charts = [
        _chart(rows, key, marked, (labels or {}).get(key, key))
        for key in keys
        if any(isinstance(r.get(key), int | float) for r in rows)
    ]
    return f'<div class="charts">{"".join(charts)}</div>' if charts else ""


def _chart(rows: list[dict[str, Any]], key: str, highlight: tuple[str, ...], title: str) -> str:
    values = [r.get(key) if isinstance(r.get(key), int | float) else None for r in rows]
    known = [v for v in values if v is not None]
    low, high = min(known), max(known)
    if high == low:
        low, high = low - 1, high + 1
    span_x = WIDTH - LEFT - RIGHT
    step = span_x / max(len(rows) - 1, 1)

    def x(i: int) -> float:
        return LEFT + (i * step if len(rows) > 1 else span_x / 2)

    def y(v: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (v - low) / (high - low))

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)} per run">',
        f'<text class="chart-title" x="12" y="17">{escape(title)}</text>',
    ]
    every_marked = all(str(r.get("name")) in highlight for r in rows)
    for v in (low, high):
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>')
        if not every_marked:  # every point carries its value already
            out.append(
                f'<text class="tick" x="{LEFT - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{_num(v)}</text>'
            )
    points = [(x(i), y(v)) for i, v in enumerate(values) if v is not None]
    if len(points) > 1:
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        out.append(f'<polyline class="line" points="{path}"/>')
    for i, (row, v) in enumerate(zip(rows, values, strict=True)):
        name = str(row.get("name", i))
        marked = name in highlight
        if v is not None:
            cls = "dot marked" if marked else "dot"
            out.append(
                f'<circle class="{cls}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="{4.5 if marked else 3}">'
                f"<title>{escape(name)}: {_num(v)}</title></circle>"
            )
            if marked:
                out.append(f'<text class="value" x="{x(i):.1f}" y="{y(v) - 8:.1f}">{_num(v)}</text>')
        every = -(-len(rows) // 8)  # at most about 8 names fit under a chart
        if marked or i % every == 0:
            label = name if len(name) <= 8 else name[:7] + "…"
            cls = "xlabel marked" if marked else "xlabel"
            out.append(f'<text class="{cls}" x="{x(i):.1f}" y="{HEIGHT - 12}">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _num(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
