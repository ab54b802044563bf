"""Two runs' kept answers to the same ids side by side, most different first, with per-field totals
and the per-version statistics as small charts."""

from __future__ import annotations

from typing import Any

from engine import history
from viewer.charts import small_multiples
from viewer.compare import compare_records
from viewer.html import counts_html, e, layout, num, pager, parts_html, url
from viewer.pairing import PairJob, pair_job
from viewer.runs import RunRef
from viewer.state import NotFound, State, int_param

PAGE_SIZE = 20
SORTS = {"diff": "most different first", "same": "least different first", "id": "by id"}
STAT_LABELS = {
    "mean_reasons": "mean reasons per answer",
    "mean_reason_chars": "mean reason characters",
    "mean_diseases": "mean diseases per answer",
    "score": "score (noted)",
}


def compare_page(state: State, params: dict[str, Any]) -> str:
    picked = params.get("run") or []
    a_key = params.get("a") or (picked[0] if len(picked) == 2 else "")
    b_key = params.get("b") or (picked[1] if len(picked) == 2 else "")
    if not a_key or not b_key:
        raise NotFound("pick exactly two runs to compare (tick two boxes on the runs page)")
    a, b = state.run(a_key), state.run(b_key)
    stage_a, stage_b = state.stage(a, params.get("sa")), state.stage(b, params.get("sb"))
    sort = params.get("sort") if params.get("sort") in SORTS else "diff"
    query = str(params.get("q", "")).strip()
    job = pair_job(state, state.index(a, stage_a), state.index(b, stage_b))
    if not job.finished.wait(state.compare_wait_s):
        return _progress(job, a, b)
    if job.error is not None:
        raise job.error
    comparer = job.comparer
    listed = [(rid, d) for rid, d in job.shared if query.lower() in rid.lower()]
    if sort == "diff":
        listed.sort(key=lambda x: -x[1])
    elif sort == "same":
        listed.sort(key=lambda x: x[1])
    else:
        listed.sort(key=lambda x: x[0])
    page = min(int_param(params.get("page")), max((len(listed) - 1) // PAGE_SIZE, 0))
    shown = listed[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]

    def link(p: int) -> str:
        return url("/compare", a=a.key, b=b.key, sa=stage_a, sb=stage_b, sort=sort, q=query, page=p or None)

    names = (a.name, b.name)
    title = f'<span class="side-a">{e(a.name)}</span> ⟷ <span class="side-b">{e(b.name)}</span>'
    body = f"""<h1>Compare {title}</h1>
{_form(state, a, b, stage_a, stage_b, sort, query)}
{_summary(job, a, b, stage_a, stage_b)}
<section><h2>Per-version statistics</h2>{_charts(state, comparer, names)}</section>
<section><h2>Answers to the same ids <span class="muted small">({SORTS[sort]})</span></h2>
<p class="legend"><span class="d-same">same</span> <span class="d-matched">matched
<span class="pair-note">score ↔ position on the other side</span></span>
<span class="d-removed">only in A</span> <span class="d-added">only in B</span></p>
{pager(len(listed), page, PAGE_SIZE, link)}
{_cards(state, a, b, stage_a, stage_b, shown, comparer)}
{pager(len(listed), page, PAGE_SIZE, link)}</section>"""
    return layout(f"{a.name} ⟷ {b.name}", body, [("Runs", "/"), (f"{a.name} ⟷ {b.name}", None)])


def _form(state: State, a: RunRef, b: RunRef, stage_a: str, stage_b: str, sort: str, query: str) -> str:
    def run_select(name: str, current: RunRef) -> str:
        opts = "".join(
            f'<option value="{e(r.key)}"{" selected" if r.key == current.key else ""}>'
            f"{e(r.name)} ({e(r.key)})</option>"
            for r in state.runs()
        )
        return f'<select name="{name}" aria-label="run {name}">{opts}</select>'

    def stage_select(name: str, ref: RunRef, current: str) -> str:
        opts = "".join(f"<option{' selected' if s == current else ''}>{e(s)}</option>" for s in ref.stages)
        return f'<select name="{name}" aria-label="stage">{opts}</select>'

    sorts = "".join(
        f'<option value="{k}"{" selected" if k == sort else ""}>{v}</option>' for k, v in SORTS.items()
    )
    return f"""<form class="filters" method="get" action="/compare">
<span class="side-a">A</span> {run_select("a", a)} {stage_select("sa", a, stage_a)}
<span class="side-b">B</span> {run_select("b", b)} {stage_select("sb", b, stage_b)}
<select name="sort" aria-label="sort">{sorts}</select>
<input type="search" name="q" value="{e(query)}" placeholder="id" aria-label="id">
<button type="submit">Compare</button></form>"""


def _progress(job: PairJob, a: RunRef, b: RunRef) -> str:
    """A page that reloads itself every second until the comparison is ready."""
    share = job.done / job.total if job.total else 1.0
    body = f"""<h1>Comparing {e(a.name)} ⟷ {e(b.name)}</h1>
<p class="summary">{num(job.done)} of {num(job.total)} shared ids compared ({share:.0%}); this page reloads
until the comparison is ready. It is computed once per version of the two runs.</p>
<progress max="{job.total}" value="{job.done}"></progress>"""
    return layout("Comparing", body, [("Runs", "/"), (f"{a.name} ⟷ {b.name}", None)], refresh=1)


def _summary(job: PairJob, a: RunRef, b: RunRef, stage_a: str, stage_b: str) -> str:
    shared = job.shared
    changed = sum(d > 0 for _, d in shared)
    rows = "".join(
        f"<tr><th>{e(field)}</th><td class='num'>{num(t['changed'])}</td>"
        f"<td>{counts_html(t['counts'], t['kind'])}</td></tr>"
        for field, t in job.fields.items()
    )
    return f"""<p class="summary"><b>{num(len(shared))}</b> ids answered in both
(<code>{e(stage_a)}</code> kept in {e(a.name)}, <code>{e(stage_b)}</code> kept in {e(b.name)}),
<b>{num(changed)}</b> of them differently; {num(job.only_a)} only in A,
{num(job.only_b)} only in B.
Compared with the <b>{e(job.comparer.name)}</b> comparer.</p>
<table class="totals"><thead><tr><th>field</th><th>ids changed</th><th>items over all shared ids</th></tr>
</thead>
<tbody>{rows}</tbody></table>"""


def _charts(state: State, comparer: Any, names: tuple[str, str]) -> str:
    rows = history.table([ref.run for ref in state.runs()])
    keys = list(comparer.stats)
    if not keys:  # no task statistics: every numeric figure of the last stage but the counts
        skip = {"kept", "rejected", "failed", "delta", "score", "records"}
        keys = [k for r in rows for k, v in r.items() if isinstance(v, int | float) and k not in skip]
        keys = list(dict.fromkeys(keys))[:6]
    if any(r.get("score") is not None for r in rows):
        keys.append("score")
    chart = small_multiples(rows, keys, names, STAT_LABELS)
    return chart or '<p class="muted">no statistics recorded in the manifests</p>'


def _cards(
    state: State,
    a: RunRef,
    b: RunRef,
    stage_a: str,
    stage_b: str,
    shown: list[tuple[str, float]],
    comparer: Any,
) -> str:
    if not shown:
        return '<p class="empty">No shared ids.</p>'
    index_a, index_b = state.index(a, stage_a), state.index(b, stage_b)
    left = index_a.read_many(index_a.find(rid, "kept")[0] for rid, _ in shown)
    right = index_b.read_many(index_b.find(rid, "kept")[0] for rid, _ in shown)
    cards = []
    for (rid, dist), ra, rb in zip(shown, list(left), list(right), strict=True):
        diffs = compare_records(comparer, ra, rb)
        rows = "".join(
            f'<tr><th>{e(f)}<div class="counts">{counts_html(d["counts"], d["kind"])}</div></th>'
            f"<td>{parts_html(d, 'a')}</td><td>{parts_html(d, 'b')}</td></tr>"
            for f, d in diffs.items()
        )
        same = [f for f in ra if f not in diffs and f in rb and f not in ("id", "meta") and ra[f] == rb[f]]
        context = ""
        if same:
            inner = "".join(f"<dt>{e(f)}</dt><dd>{e(ra[f])}</dd>" for f in same)
            context = (
                f'<details class="same"><summary>same in both: {e(", ".join(same))}</summary>'
                f"<dl>{inner}</dl></details>"
            )
        link_a = url("/record", run=a.key, stage=stage_a, id=rid, outcome="kept")
        link_b = url("/record", run=b.key, stage=stage_b, id=rid, outcome="kept")
        bar = min(dist, 1.0) * 80  # of an 80-pixel bar
        cards.append(
            f"""<article class="card" id="id-{e(rid)}"><header><code class="id">{e(rid)}</code>
<span class="distance" title="share of differing items (characters for text), averaged over the fields">
<svg class="bar" width="80" height="8" aria-hidden="true"><rect class="bg" width="80" height="8" rx="4"/>
<rect class="fill" width="{bar:.1f}" height="8" rx="4"/></svg> differs {dist:.0%}</span>
<a href="{link_a}">A record</a> · <a href="{link_b}">B record</a></header>
<table class="side"><thead><tr><th></th><th class="side-a">{e(a.name)}</th>
<th class="side-b">{e(b.name)}</th></tr></thead>
<tbody>{rows}</tbody></table>{context}</article>"""
        )
    return "".join(cards)
