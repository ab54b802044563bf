"""HTML building blocks shared by the pages: the layout, escaping, numbers, links, values and diff parts.
Everything is escaped here; pages pass plain strings and data."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

import orjson


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def url(path: str, **params: Any) -> str:
    """A link with the non-empty parameters, escaped for an attribute."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "", False)})
    return e(f"{path}?{query}" if query else path)


def num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 100:
            return f"{int(value):,}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return e(value)


def layout(
    title: str, body: str, crumbs: list[tuple[str, str | None]] = (), *, refresh: int | None = None
) -> str:
    """A whole page: crumbs are (label, link or None) pairs shown above the content; `refresh`
    reloads it after that many seconds."""
    trail = " <span class='sep'>›</span> ".join(
        f'<a href="{href}">{e(label)}</a>' if href else f"<span>{e(label)}</span>" for label, href in crumbs
    )
    return f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""}
<title>{e(title)} · engine view</title>
<link rel="stylesheet" href="/static/view.css">
<script src="/static/view.js" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="/">engine view</a><nav class="crumbs">{trail}</nav></header>
<main>
{body}
</main>
</body>
</html>
"""


def badge(outcome: str) -> str:
    return f'<span class="badge {e(outcome)}">{e(outcome)}</span>'


def value_html(value: Any, *, limit: int | None = None) -> str:
    """A field value for reading: lists as numbered items, text with its line breaks, the rest as JSON."""
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        items = "".join(f"<li>{e(v)}</li>" for v in value)
        return f'<ol class="items">{items}</ol>' if value else '<span class="muted">(empty list)</span>'
    if isinstance(value, str):
        text = value if limit is None or len(value) <= limit else value[:limit] + "…"
        return f'<div class="text">{e(text)}</div>' if text else '<span class="muted">(empty)</span>'
    if value is None:
        return '<span class="muted">null</span>'
    return f"<pre>{e(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())}</pre>"


def fields_table(record: dict[str, Any], names: list[str], cls: str = "fields") -> str:
    if not names:
        return '<p class="muted">none</p>'
    rows = "".join(f"<tr><th>{e(n)}</th><td>{value_html(record.get(n))}</td></tr>" for n in names)
    return f'<table class="{cls}">{rows}</table>'


def parts_html(diff: dict[str, Any], side: str) -> str:
    """One side of a field diff: items as a list (marked same/matched/removed/added), text inline."""
    parts = diff[side]
    if diff["kind"] == "text":
        spans = "".join(
            f'<span class="d-{p["status"]}">{e(p["text"])}</span>' if p["status"] != "same" else e(p["text"])
            for p in parts
        )
        return f'<div class="text">{spans}</div>' if spans else '<span class="muted">(empty)</span>'
    if not parts:
        return '<span class="muted">(none)</span>'
    items = []
    for p in parts:
        note = f' <span class="pair-note">{e(p["note"])}</span>' if p.get("note") else ""
        mark = {"added": "+ ", "removed": "− "}.get(p["status"], "")
        items.append(f'<li class="d-{p["status"]}">{mark}{e(p["text"])}{note}</li>')
    return f'<ol class="items diff">{"".join(items)}</ol>'


def counts_html(counts: dict[str, int], kind: str) -> str:
    """`3 same · 1 matched · 2 only in A · 1 only in B` (characters for text fields)."""
    unit = " chars" if kind == "text" else ""
    labels = {"same": "same", "matched": "matched", "removed": "only in A", "added": "only in B"}
    shown = [
        f'<span class="c-{k}">{num(counts[k])}{unit if k != "matched" else ""} {labels[k]}</span>'
        for k in ("same", "matched", "removed", "added")
        if counts.get(k)
    ]
    return " · ".join(shown) or '<span class="muted">empty on both sides</span>'


def pager(total: int, page: int, size: int, link: Any) -> str:
    """`‹ prev  1–50 of 1,234  next ›`; `link(page)` gives a page's href."""
    if total == 0:
        return ""
    pages = (total + size - 1) // size
    first, last = page * size + 1, min(total, (page + 1) * size)
    prev = f'<a href="{link(page - 1)}" rel="prev">‹ previous</a>' if page > 0 else "<span>‹ previous</span>"
    nxt = f'<a href="{link(page + 1)}" rel="next">next ›</a>' if page + 1 < pages else "<span>next ›</span>"
    jumps = ""
    if pages > 2:
        jumps = f' <a href="{link(0)}">first</a> · <a href="{link(pages - 1)}">last</a>'
    return (
        f'<nav class="pager">{prev} <span class="range">{num(first)}–{num(last)} of {num(total)}</span> '
        f"{nxt}{jumps}</nav>"
    )
