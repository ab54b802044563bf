"""The runs list, and one run: its stage counts, usage and the record browser."""

from __future__ import annotations

from typing import Any

from engine import history
from engine.store import OUTCOMES
from viewer import runs
from viewer.charts import small_multiples
from viewer.compare import NOT_ANSWER
from viewer.html import badge, e, layout, num, pager, url
from viewer.records import LineIndex
from viewer.state import State, int_param

PAGE_SIZE = 50
PREVIEW_CHARS = 160
_LAST_COLUMNS = ("score", "delta", "note")


# ---- runs ----------------------------------------------------------------------------------------
def runs_page(state: State) -> str:
    refs = state.runs()
    if not refs:
        body = (
            f"<h1>Runs</h1><p class='empty'>No runs under <code>{e(state.shown_root)}</code> yet: a run "
            "appears here once <code>python -m engine run SPEC</code> has written its manifest.json.</p>"
        )
        return layout("Runs", body)
    rows = history.table([ref.run for ref in refs])
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in _LAST_COLUMNS and k != "name"]
    columns += [c for c in _LAST_COLUMNS if any(c in r for r in rows)]
    columns = [c for c in columns if any(r.get(c) not in (None, "", []) for r in rows)]  # as `engine runs`
    head = "".join(f'<th data-sort="{e(c)}">{e(c).replace("_", "_<wbr>")}</th>' for c in ["name", *columns])
    body_rows = []
    for ref, row in zip(refs, rows, strict=True):
        cells = [f'<td><a href="{url("/run", run=ref.key)}">{e(row["name"])}</a></td>']
        for c in columns:
            value = row.get(c)
            if isinstance(value, list):  # a named run's `--set` items
                value = " ".join(map(str, value))
            cls = "num" if isinstance(value, int | float) and not isinstance(value, bool) else c
            if c == "delta" and isinstance(value, int | float):
                cls += " up" if value > 0 else " down" if value < 0 else ""
                text = f"{value:+,.1f}".removesuffix(".0")
            else:
                text = (
                    num(value) if isinstance(value, int | float) else e(value if value is not None else "–")
                )
            cells.append(
                f'<td class="{cls}" data-value="{e(value if value is not None else "")}">{text}</td>'
            )
        pick = (
            f'<td class="pick"><input type="checkbox" name="run" value="{e(ref.key)}" aria-label="pick"></td>'
        )
        body_rows.append(f"<tr>{pick}{''.join(cells)}</tr>")
    table = (
        f'<table class="runs sortable"><thead><tr><th title="pick two to compare">⇄</th>{head}</tr></thead>'
        f"<tbody>{''.join(body_rows)}</tbody></table>"
    )
    names = tuple(r["name"] for r in rows)
    charts = small_multiples(rows, plot_keys(rows), marked=names if len(names) <= 6 else names[-1:])
    body = f"""<h1>Runs <span class="muted small">{len(refs)} under {e(state.shown_root)}</span></h1>
<form class="compare-form" action="/compare" method="get">
<p class="hint">Tick two runs to compare their answers to the same ids.
<button type="submit" id="compare-button">Compare the two ticked runs</button></p>
<div class="runs-layout"><div class="table-wrap">{table}</div>
<figure class="plot">{charts}<figcaption>score and statistics per run, as
<code>engine runs --plot</code> draws them (<a href="/plot.png">its PNG</a>)</figcaption></figure></div>
</form>"""
    return layout("Runs", body)


def plot_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The figures `engine runs --plot` draws (engine.history.figure): the score, then every numeric
    column but the outcome counts and the delta, leaving out those equal in every run."""
    skip = {"rejected", "failed", "delta", "score"}
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in skip and k not in keys and isinstance(v, int | float)]
    if len(rows) > 1:
        keys = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    return (["score"] if any(r.get("score") is not None for r in rows) else []) + keys


# ---- one run --------------------------------------------------------------------------------------
def run_page(state: State, key: str, params: dict[str, str]) -> str:
    ref = state.run(key)
    stage = state.stage(ref, params.get("stage"))
    manifest = ref.run.manifest
    header = _run_header(ref)
    stage_rows = []
    for name in ref.stages:
        index = state.index(ref, name)
        stage_rows.append(_stage_row(ref, name, index, manifest["stages"].get(name, {}), name == stage))
    stages = (
        '<table class="stages"><thead><tr><th>stage</th><th>kept</th><th>rejected</th><th>failed</th>'
        "<th>pending</th><th>tokens in / out</th><th>mean latency</th><th>statistics</th></tr></thead>"
        f"<tbody>{''.join(stage_rows)}</tbody></table>"
    )
    body = f"""{header}
<section><h2>Stages</h2>{stages}</section>
<section><h2>Records of <code>{e(stage)}</code></h2>{_browser(state, ref, stage, params)}</section>"""
    return layout(ref.name, body, [("Runs", "/"), (ref.name, None)])


def _run_header(ref: runs.RunRef) -> str:
    m = ref.run.manifest
    status = m.get("status", "?")
    note = ref.run.notes
    noted = ""
    if note.get("score") is not None or note.get("text"):
        noted = f'<p class="note-line">score <b>{num(note.get("score"))}</b> {e(note.get("text", ""))}</p>'
    providers = runs.usage(ref)
    prow = []
    for name, p in providers.items():
        prow.append(
            f"<tr><td>{e(name)}</td><td>{e(p.get('kind'))}/{e(p.get('model'))}</td>"
            + "".join(
                f"<td class='num'>{num(p.get(k))}</td>"
                for k in ("requests", "prompt_tokens", "completion_tokens", "rate_limited", "retries")
            )
            + f"<td class='num'>{_cost(p.get('cost'))}</td></tr>"
        )
    ptable = (
        '<table class="providers"><thead><tr><th>provider</th><th>model</th><th>requests</th>'
        "<th>prompt tokens</th><th>completion tokens</th><th>429s</th><th>retries</th><th>cost</th></tr>"
        f"</thead><tbody>{''.join(prow)}</tbody></table>"
        if prow
        else ""
    )
    return f"""<h1>{e(ref.name)} <span class="status {e(status)}">{e(status)}</span></h1>
<p class="description">{e(m.get("description", ""))}</p>{noted}
<p class="meta">created {e(m.get("created", "?"))} · updated {e(m.get("updated", "?"))} ·
spec <code>{e(m.get("spec", "?"))}</code> ({e(m.get("spec_hash", "?"))}) ·
folder <code>{e(ref.out_dir)}</code></p>
{ptable}"""


def _cost(value: Any) -> str:
    return "–" if value is None else f"{value:,.4f}"


def _stage_row(ref: runs.RunRef, name: str, index: LineIndex, info: dict[str, Any], current: bool) -> str:
    link = url("/run", run=ref.key, stage=name)
    c = index.counts
    pending = runs.pending(ref, name)
    tokens = f"{num(index.usage['prompt_tokens'])} / {num(index.usage['completion_tokens'])}"
    latency = index.usage["latency_s"] / index.usage["answers"] if index.usage["answers"] else None
    stats = " · ".join(
        f"{e(k)} {num(v)}" for k, v in info.get("stats", {}).items() if isinstance(v, int | float)
    )
    why = []
    for reason, n in index.reasons.most_common():
        href = url("/run", run=ref.key, stage=name, outcome="rejected", reason=reason)
        why.append(f'<a class="chip rejected" href="{href}">{e(reason)} <b>{num(n)}</b></a>')
    for error, n in index.errors.most_common():
        href = url("/run", run=ref.key, stage=name, outcome="failed", reason=error)
        why.append(f'<a class="chip failed" href="{href}">{e(error)} <b>{num(n)}</b></a>')
    detail = f'<tr class="why"><td></td><td colspan="7">{"".join(why)}</td></tr>' if why else ""
    return (
        f'<tr class="{"current" if current else ""}"><td><a href="{link}">{e(name)}</a></td>'
        f"<td class='num kept'>{num(c['kept'])}</td><td class='num rejected'>{num(c['rejected'])}</td>"
        f"<td class='num failed'>{num(c['failed'])}</td><td class='num'>{num(pending)}</td>"
        f"<td class='num'>{tokens}</td><td class='num'>{'–' if latency is None else f'{latency:.2f} s'}</td>"
        f"<td class='stats'>{stats}</td></tr>{detail}"
    )


def _browser(state: State, ref: runs.RunRef, stage: str, params: dict[str, str]) -> str:
    index = state.index(ref, stage)
    outcome = params.get("outcome", "")
    outcome = outcome if outcome in OUTCOMES else ""
    reason, query = params.get("reason", ""), params.get("q", "").strip()
    page = int_param(params.get("page"))
    selected = index.select(outcome, reason, query)
    pages = max((len(selected) + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    page = min(page, pages - 1)
    shown = selected[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    comparer = state.comparer(index)
    options = [f'<option value="">all outcomes ({num(len(index.rows))})</option>']
    options += [
        f'<option value="{o}"{" selected" if o == outcome else ""}>{o} ({num(index.counts[o])})</option>'
        for o in OUTCOMES
    ]
    reasons = [*index.reasons, *index.errors]
    reason_options = ['<option value="">any reason</option>'] + [
        f'<option value="{e(r)}"{" selected" if r == reason else ""}>{e(r)}</option>' for r in reasons
    ]
    form = f"""<form class="filters" method="get" action="/run">
<input type="hidden" name="run" value="{e(ref.key)}"><input type="hidden" name="stage" value="{e(stage)}">
<select name="outcome" aria-label="outcome">{"".join(options)}</select>
<select name="reason" aria-label="reason">{"".join(reason_options)}</select>
<input type="search" name="q" value="{e(query)}" placeholder="id or text, e.g. 高血压" aria-label="search">
<button type="submit">Show</button></form>"""
    rows = []
    for position, record in zip(shown, list(index.read_many(shown)), strict=True):
        row = index.rows[position]
        nth = index.find(row.id, row.outcome).index(position)
        href = url("/record", run=ref.key, stage=stage, id=row.id, outcome=row.outcome, n=nth or None)
        rows.append(
            f'<tr><td class="id"><a href="{href}">{e(row.id)}</a></td><td>{badge(row.outcome)}</td>'
            f'<td class="reason">{e(_reason_text(record, row.outcome))}</td>'
            f'<td class="preview">{_preview(record, row.outcome, comparer.fields)}</td></tr>'
        )

    def link(p: int) -> str:
        return url("/run", run=ref.key, stage=stage, outcome=outcome, reason=reason, q=query, page=p or None)

    if not rows:
        listing = '<p class="empty">No records match.</p>'
    else:
        listing = (
            '<table class="records"><thead><tr><th>id</th><th>outcome</th><th>reason</th><th>answer</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    found = f'<p class="found">{num(len(selected))} records match</p>' if (outcome or reason or query) else ""
    pages_nav = pager(len(selected), page, PAGE_SIZE, link)
    return f"{form}{found}{pages_nav}{listing}{pages_nav}"


def _reason_text(record: dict[str, Any], outcome: str) -> str:
    if outcome == "rejected":
        return f"{record.get('filter', '?')}: {record.get('reason', '')}"
    if outcome == "failed":
        status = f" ({record['status_code']})" if record.get("status_code") else ""
        return f"{record.get('error', 'failed')}{status}"
    return ""


def _preview(record: dict[str, Any], outcome: str, fields: tuple[str, ...]) -> str:
    """A line of the answer: the task's answer fields when it has them, else short fields first."""
    if outcome == "failed":
        return f'<span class="muted">{e(str(record.get("message", ""))[:PREVIEW_CHARS])}</span>'
    inner = record.get("record") if outcome == "rejected" else record
    if not isinstance(inner, dict):
        raw = str(record.get("raw_text", ""))
        return f'<span class="muted">raw:</span> {e(raw[:PREVIEW_CHARS])}'
    names = [f for f in fields if f in inner] or sorted(
        (f for f in inner if f not in NOT_ANSWER),
        key=lambda f: (not isinstance(inner[f], list), len(str(inner[f]))),
    )
    bits, budget = [], PREVIEW_CHARS
    for name in names:
        value = inner[name]
        text = "；".join(map(str, value)) if isinstance(value, list) else str(value)
        text = text if len(text) <= budget else text[: max(budget, 12)] + "…"
        bits.append(f'<span class="field">{e(name)}</span> {e(text)}')
        budget -= len(text)
        if budget <= 0:
            break
    return " ".join(bits)
