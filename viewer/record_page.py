"""One record: why it was rejected or failed, its input and answer, the raw answer, the record a
near-duplicate copies (side by side), and provider, latency and usage from `meta`."""

from __future__ import annotations

from typing import Any

from engine.errors import SpecError
from engine.store import OUTCOMES
from viewer import runs
from viewer.compare import NOT_ANSWER, generic_diff
from viewer.html import badge, e, fields_table, layout, num, parts_html, url, value_html
from viewer.state import NotFound, State, int_param


def record_page(state: State, key: str, params: dict[str, str]) -> str:
    ref = state.run(key)
    stage = state.stage(ref, params.get("stage"))
    index = state.index(ref, stage)
    rid = params.get("id", "")
    outcome = params.get("outcome") if params.get("outcome") in OUTCOMES else None
    found = index.find(rid, outcome)
    nth = int_param(params.get("n"))
    if nth >= len(found):
        raise NotFound(
            f"stage {stage!r} of run {ref.name!r} has no record {rid!r}"
            + (f" ({outcome})" if outcome else "")
        )
    position = found[nth]
    row = index.rows[position]
    entry = index.read(position)
    answer = _answer_of(entry, row.outcome)
    source = (answer or entry).get("source_id", rid)
    given = _input_record(state, ref, stage, str(source))
    comparer = state.comparer(index)
    input_names, answer_names = _split_fields(answer, given, comparer.fields)
    sections = [_verdict(entry, row.outcome)]
    if row.outcome == "rejected":
        sections.append(_duplicate(state, ref, stage, entry, answer))
    if given is not None:
        names = [n for n in given if n not in NOT_ANSWER]
        sections.append(f"<section><h2>Input</h2>{fields_table(given, names)}</section>")
    elif answer is not None and input_names:
        sections.append(f"<section><h2>Input</h2>{fields_table(answer, input_names)}</section>")
    elif answer is None:
        sections.append(
            "<section><h2>Input</h2><p class='muted'>not stored with this outcome, and the spec's input "
            "could not be read</p></section>"
        )
    if answer is not None:
        sections.append(f"<section><h2>Answer</h2>{fields_table(answer, answer_names)}</section>")
    meta = (answer or entry).get("meta")
    meta = meta if isinstance(meta, dict) else {}
    raw = entry.get("raw_text") or meta.get("raw_text")
    if raw:
        sections.append(f'<section><h2>Raw answer</h2><pre class="raw">{e(raw)}</pre></section>')
    sections.append(_meta_section(entry, meta))
    back = url("/run", run=ref.key, stage=stage)
    body = f"""<h1><code>{e(rid)}</code> {badge(row.outcome)}</h1>
<p class="meta">run <a href="{url("/run", run=ref.key)}">{e(ref.name)}</a> · stage
<a href="{back}">{e(stage)}</a>{f" · sample {e(entry.get('sample'))}" if entry.get("sample") else ""}</p>
{"".join(s for s in sections if s)}"""
    return layout(
        f"{rid} · {ref.name}",
        body,
        [("Runs", "/"), (ref.name, url("/run", run=ref.key)), (stage, back), (rid, None)],
    )


def _answer_of(entry: dict[str, Any], outcome: str) -> dict[str, Any] | None:
    """The answer record of an outcome line: the line itself when kept, the filtered record when a
    filter rejected it, none for a parse rejection or a failure."""
    if outcome == "kept":
        return entry
    record = entry.get("record")
    return record if isinstance(record, dict) else None


def _input_record(state: State, ref: runs.RunRef, stage: str, rid: str) -> dict[str, Any] | None:
    sources = runs.input_source(ref, stage)
    if not sources:
        return None
    try:
        index = state.indexes.get(sources)
    except (SpecError, OSError):  # an input file since edited or moved: show the record without it
        return None
    found = index.find(rid)
    return index.read(found[0]) if found else None


def _split_fields(
    answer: dict[str, Any] | None, given: dict[str, Any] | None, task_fields: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """(input fields, answer fields) of an answer record: what the input did not have (or had
    otherwise) is the answer; without the input, the task's answer fields, else every field."""
    if answer is None:
        return [], []
    names = [n for n in answer if n not in NOT_ANSWER]
    if given is not None:
        new = [n for n in names if n not in given or given[n] != answer[n]]
        return [n for n in names if n not in new], new
    task = [n for n in names if n in task_fields]
    return ([n for n in names if n not in task], task) if task else ([], names)


def _verdict(entry: dict[str, Any], outcome: str) -> str:
    if outcome == "rejected":
        return (
            f'<div class="callout rejected"><b>Rejected by <code>{e(entry.get("filter", "?"))}</code></b>: '
            f"{e(entry.get('reason', ''))}</div>"
        )
    if outcome == "failed":
        status = f" (HTTP {e(entry['status_code'])})" if entry.get("status_code") else ""
        return (
            f'<div class="callout failed"><b>Failed: {e(entry.get("error", "?"))}{status}</b><br>'
            f"{e(entry.get('message', ''))}</div>"
        )
    return ""


def _duplicate(
    state: State, ref: runs.RunRef, stage: str, entry: dict[str, Any], answer: dict[str, Any] | None
) -> str:
    """The record a near-duplicate or leakage rejection names, beside this one, differences marked."""
    named = runs.duplicate_ref(str(entry.get("reason", "")))
    if named is None or answer is None:
        return ""
    kind, dup_id = named
    where, other, link = "", None, ""
    if kind == "id":
        index = state.index(ref, stage)
        found = index.find(str(dup_id), "kept") or index.find(str(dup_id))
        if found:
            other, row = index.read(found[0]), index.rows[found[0]]
            other = other.get("record", other) if row.outcome == "rejected" else other
            where = f"{row.outcome} in this stage"
            link = url("/record", run=ref.key, stage=stage, id=row.id, outcome=row.outcome)
    else:
        files = runs.side_files(ref, stage, str(entry.get("filter")), kind, str(entry.get("reason")))
        if files:
            index = state.indexes.get([("input", p) for p in files])
            found = index.find(str(dup_id))
            if found:
                other = index.read(found[0])
                where = f"{kind.split()[0]} file {index.files[index.rows[found[0]].file].name}"
    title = f"{'Near-duplicate of' if kind != 'test id' else 'Copies'} {kind} <code>{e(dup_id)}</code>"
    if other is None:
        return f'<section><h2>{title}</h2><p class="muted">that record could not be found</p></section>'
    names = [n for n in answer if n not in NOT_ANSWER and n in other and isinstance(answer[n], str | list)]
    rows = []
    for name in names:
        diff = generic_diff(answer[name], other[name])
        rows.append(
            f"<tr><th>{e(name)}</th><td>{parts_html(diff, 'a')}</td><td>{parts_html(diff, 'b')}</td></tr>"
        )
    head = f'<a href="{link}">{e(dup_id)}</a>' if link else e(dup_id)
    return f"""<section><h2>{title} <span class="muted small">({e(where)})</span></h2>
<table class="side"><thead><tr><th></th><th>this record</th><th>{head}</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>"""


def _meta_section(entry: dict[str, Any], meta: dict[str, Any]) -> str:
    items = {k: entry[k] for k in ("key", "round", "sample") if k in entry}
    usage = meta.get("usage") if isinstance(meta.get("usage"), dict) else {}
    for k in ("provider", "model", "latency_s", "finish_reason", "attempts", "calls"):
        if k in meta:
            items[k] = meta[k]
    for k, v in usage.items():
        items[k] = v
    for k, v in meta.items():
        if k not in items and k not in ("usage", "raw_text"):
            items[k] = v
    if not items:
        return ""
    rows = "".join(
        f"<tr><th>{e(k)}</th><td>{value_html(v) if not isinstance(v, int | float) else num(v)}</td></tr>"
        for k, v in items.items()
    )
    return f'<section><h2>Provider and usage</h2><table class="fields usage">{rows}</table></section>'
