"""`engine view` over real HTTP: the runs table, a run's counts and record browser, a record with its
filter reason and near-duplicate, two versions compared, and that viewing never changes a run."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.engine_helpers import ROOT, engine
from tests.view_fixture import ViewerThread
from viewer import pairing


@pytest.fixture(scope="module")
def viewer(view_runs: Path) -> Iterator[ViewerThread]:
    with ViewerThread(view_runs) as server:
        yield server


def get(server: ViewerThread, path: str, **params: object) -> tuple[int, str, dict[str, str]]:
    url = server.url + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode("utf-8", "replace"), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace"), dict(err.headers)


def record_ids(html: str) -> list[str]:
    """The ids listed in a run page's record table, in order."""
    return re.findall(r'<td class="id"><a href="[^"]*">([^<]+)</a>', html)


def test_runs_page_shows_the_history_table_with_scores_notes_and_charts(viewer: ViewerThread) -> None:
    status, html, headers = get(viewer, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    for name in ("v1", "v2", "v3"):
        assert f'href="/run?run={name}%2Fout">{name}</a>' in html
    assert "1,765" in html and ">+34<" in html  # v1's score, v2's delta
    assert "两阶段（疾病-&gt;诊断依据）" in html  # v3's note, escaped, in UTF-8
    assert html.count('<svg class="chart"') >= 4 and ">mean_reasons<" in html
    # nothing is loaded from elsewhere: the page works without network
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_run_page_counts_outcomes_reasons_errors_tokens_and_cost(viewer: ViewerThread) -> None:
    status, html, _ = get(viewer, "/run", run="v1/out")
    assert status == 200
    counts = re.search(r"<td class='num kept'>(\d+)</td><td class='num rejected'>(\d+)</td>"
                       r"<td class='num failed'>(\d+)</td><td class='num'>(\d+)</td>", html)  # fmt: skip
    assert counts and counts.groups() == ("9", "2", "1", "0")  # kept, rejected, failed, pending
    assert "rouge_dedupe: near-duplicate <b>1</b>" in html and "format: too many items <b>1</b>" in html
    assert "Fatal <b>1</b>" in html  # failed, by error class
    assert "openai/qwen2.5-7b" in html and "mean_reasons" in html
    manifest = orjson.loads((viewer.root / "v1" / "out" / "manifest.json").read_bytes())
    usage = manifest["providers"]["teacher"]
    assert f"<td class='num'>{usage['prompt_tokens']:,}</td>" in html


def test_record_browser_filters_by_outcome_and_reason_and_searches_ids_and_chinese_text(
    viewer: ViewerThread,
) -> None:
    _, html, _ = get(viewer, "/run", run="v1/out")
    assert len(record_ids(html)) == 12  # 9 kept, 2 rejected, 1 failed
    _, html, _ = get(viewer, "/run", run="v1/out", outcome="rejected")
    assert record_ids(html) == ["p05", "p07"]
    _, html, _ = get(viewer, "/run", run="v1/out", outcome="rejected", reason="format: too many items")
    assert record_ids(html) == ["p07"] and "diseases has 5, more than 4" in html
    _, html, _ = get(viewer, "/run", run="v1/out", reason="Fatal")
    assert record_ids(html) == ["p11"]
    _, html, _ = get(viewer, "/run", run="v1/out", q="胆囊")  # in p04's answer and p05's (rejected) record
    assert record_ids(html) == ["p04", "p05"]
    _, html, _ = get(viewer, "/run", run="v1/out", q="P1")  # ids, without case
    assert record_ids(html) == ["p10", "p12", "p11"]  # file order: kept, then failed
    _, html, _ = get(viewer, "/run", run="v1/out", q="no such text")
    assert record_ids(html) == [] and "No records match." in html


def test_record_pages_page_through_a_large_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("viewer.pages.PAGE_SIZE", 7)
    write_stage(tmp_path / "big", 100)
    with ViewerThread(tmp_path) as server:
        _, first, _ = get(server, "/run", run="big/out")
        _, third, _ = get(server, "/run", run="big/out", page=2)
        _, last, _ = get(server, "/run", run="big/out", page=99)  # past the end: the last page
    assert record_ids(first) == [f"r{i:03d}" for i in range(7)] and "1–7 of 100" in first
    assert record_ids(third) == [f"r{i:03d}" for i in range(14, 21)]
    assert record_ids(last) == [f"r{i:03d}" for i in range(98, 100)] and "99–100 of 100" in last


def write_stage(out: Path, n: int, *, answer: str = "答案") -> Path:
    """A hand-written run: one stage, `n` kept records of a generic task (question -> answer)."""
    stage = out / "out" / "qa" / "kept"
    stage.mkdir(parents=True)
    lines = [
        orjson.dumps({"id": f"r{i:03d}", "question": f"问题{i}", "answer": f"{answer}{i}"}) for i in range(n)
    ]
    (stage / "shard-00000.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    counts = {"kept": n, "rejected": 0, "failed": 0, "pending": 0}
    manifest = {"name": out.name, "created": "2026-01-01T00:00:00Z", "stages": {"qa": {"counts": counts}}}
    (out / "out" / "manifest.json").write_bytes(orjson.dumps(manifest))
    return out


def test_near_duplicate_record_is_shown_beside_the_one_it_duplicates(viewer: ViewerThread) -> None:
    status, html, _ = get(viewer, "/record", run="v2/out", stage="dx", id="p05", outcome="rejected")
    assert status == 200
    assert "Rejected by <code>rouge_dedupe</code>" in html and "vs id &#x27;p04&#x27;" in html
    assert "Near-duplicate of id <code>p04</code>" in html and "kept in this stage" in html
    # p05 differs from p04 in a few characters: marked on both sides
    assert '<span class="d-removed">37.9</span>' in html and '<span class="d-added">37.8</span>' in html
    assert 'href="/record?run=v2%2Fout&amp;stage=dx&amp;id=p04&amp;outcome=kept"' in html


def test_failed_record_shows_the_error_and_its_input_from_the_spec(viewer: ViewerThread) -> None:
    _, html, _ = get(viewer, "/record", run="v1/out", stage="dx", id="p11", outcome="failed")
    assert "Failed: Fatal (HTTP 400)" in html and "fake server error 400" in html
    assert "<h2>Input</h2>" in html and "头晕、乏力2月" in html  # from cases.jsonl, the stage's input


def test_unparseable_answer_shows_the_raw_text_and_usage(viewer: ViewerThread) -> None:
    _, html, _ = get(viewer, "/record", run="v2/out", stage="dx", id="p09", outcome="rejected")
    assert "Rejected by <code>parse</code>" in html
    assert '<pre class="raw">根据病史，考虑关节退行性改变，建议进一步检查。</pre>' in html
    assert "<th>attempts</th><td>2</td>" in html and "<th>prompt_tokens</th>" in html


def test_kept_record_splits_input_and_answer_and_shows_provider_and_latency(viewer: ViewerThread) -> None:
    _, html, _ = get(viewer, "/record", run="v3/out", stage="dx", id="p01")
    input_part, answer_part = html.split("<h2>Input</h2>")[1].split("<h2>Answer</h2>")
    assert "feature_content" in input_part and "diseases" not in input_part
    assert "<li>不稳定型心绞痛</li>" in answer_part and "<li>高血压病史10年</li>" in answer_part
    assert (
        '<th>model</th><td><div class="text">deepseek-v3</div></td>' in html and "<th>latency_s</th>" in html
    )


def test_compare_marks_added_and_removed_diseases_and_matched_reasons_most_different_first(
    viewer: ViewerThread,
) -> None:
    status, html, _ = get(viewer, "/compare", a="v2/out", b="v3/out")
    assert status == 200 and "<b>diagnosis</b> comparer" in html
    assert "9</b> ids answered in both" in html and "0 only in A" in html and "1 only in B" in html
    differences = [float(d) for d in re.findall(r"differs (\d+)%", html)]
    assert len(differences) == 9 and differences == sorted(differences, reverse=True) and differences[-1] > 0
    p01 = html.split('id="id-p01"')[1].split("</article>")[0]
    assert '<li class="d-removed">− 高血压</li>' in p01  # v2's disease, gone in v3
    assert '<li class="d-added">+ 2型糖尿病</li>' in p01
    assert '<li class="d-matched">V1-V4导联ST段压低0.1mV <span class="pair-note">0.92 ↔ 2</span></li>' in p01
    assert '<li class="d-added">+ 肌钙蛋白I正常</li>' in p01
    # the per-version statistics the first user kept by hand, for every run, the two compared marked
    assert "mean reasons per answer" in html and "mean reason characters" in html
    assert "mean diseases per answer" in html and "score (noted)" in html
    by_id = re.findall(
        r'<code class="id">(p\d+)</code>', get(viewer, "/compare", a="v2/out", b="v3/out", sort="id")[1]
    )
    assert by_id == sorted(by_id) and len(by_id) == 9


def test_compare_takes_the_two_runs_ticked_on_the_runs_page(viewer: ViewerThread) -> None:
    _, html, _ = get(viewer, "/compare", run=["v1/out", "v3/out"])
    assert (
        'Compare <span class="side-a">v1</span>' in html and "0 only in A" in html and "1 only in B" in html
    )
    status, html, _ = get(viewer, "/compare", run=["v1/out"])
    assert status == 404 and "pick exactly two runs" in html


def test_compare_without_a_task_comparer_diffs_lists_as_sets_and_text_by_characters(tmp_path: Path) -> None:
    write_stage(tmp_path / "a", 3, answer="旧答案")
    write_stage(tmp_path / "b", 3, answer="新答案")
    with ViewerThread(tmp_path) as server:
        _, html, _ = get(server, "/compare", a="a/out", b="b/out")
    assert "<b>generic</b> comparer" in html and "3</b> of them differently" in html
    assert '<span class="d-removed">旧</span>' in html and '<span class="d-added">新</span>' in html
    assert "same in both: question" in html


def test_unknown_run_stage_or_record_is_a_readable_404(viewer: ViewerThread) -> None:
    status, html, _ = get(viewer, "/run", run="nope")
    assert status == 404 and "no run &#x27;nope&#x27;" in html and "Traceback" not in html
    status, html, _ = get(viewer, "/run", run="v1/out", stage="../../etc")
    assert status == 404 and "has no stage" in html
    status, html, _ = get(viewer, "/record", run="v1/out", stage="dx", id="p99")
    assert status == 404 and "no record &#x27;p99&#x27;" in html
    assert get(viewer, "/static/../../pyproject.toml")[0] == 404


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_viewing_every_page_never_changes_a_run(view_runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(view_runs, root)
    before = tree_digest(root)
    with ViewerThread(root) as server:
        pages = [("/", {}), ("/plot.png", {}), ("/static/view.css", {}), ("/static/view.js", {})]
        for run in ("v1/out", "v2/out", "v3/out"):
            pages += [("/run", {"run": run}), ("/run", {"run": run, "q": "咳嗽", "outcome": "kept"})]
            for rid in ("p01", "p05", "p07", "p09", "p11"):
                pages.append(("/record", {"run": run, "stage": "dx", "id": rid}))
        pages += [("/compare", {"a": "v1/out", "b": "v2/out"}), ("/compare", {"a": "v3/out", "b": "v1/out"})]
        statuses = {get(server, path, **params)[0] for path, params in pages}
    assert statuses == {200}
    assert tree_digest(root) == before


def test_the_view_follows_a_filter_replay_that_rewrites_the_stage(view_runs: Path, tmp_path: Path) -> None:
    shutil.copytree(view_runs / "v3", tmp_path / "v3")
    spec = tmp_path / "v3" / "spec.toml"
    with ViewerThread(tmp_path) as server:
        _, html, _ = get(server, "/run", run="v3/out", outcome="kept")
        assert len(record_ids(html)) == 10
        # no more item limit: the replay keeps p07, whose five diseases the format filter dropped
        spec.write_text(spec.read_text(encoding="utf-8").replace("max_items = { diseases = 4 }", ""), "utf-8")
        engine("filter", spec)
        _, html, _ = get(server, "/run", run="v3/out", outcome="kept")
    assert len(record_ids(html)) == 11 and "p07" in record_ids(html)


def start_cli(*args: object) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "view", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_on_loopback_prints_its_url_and_stops_cleanly(
    view_runs: Path, sig: signal.Signals
) -> None:
    proc, line = start_cli(view_runs)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=30) as response:
            assert "v3" in response.read().decode()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "stopped" in err


def test_cli_refuses_a_non_loopback_address_unless_allowed_and_a_missing_folder(
    view_runs: Path, tmp_path: Path
) -> None:
    proc = engine("view", view_runs, "--host", "0.0.0.0", check=False)
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr and "not a loopback" in proc.stderr
    proc = engine("view", tmp_path / "nothing", check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    served, line = start_cli(view_runs, "--host", "0.0.0.0", "--allow-remote")
    try:
        assert "http://0.0.0.0:" in line
    finally:
        served.send_signal(signal.SIGINT)
        served.communicate(timeout=20)


def test_cli_names_a_port_in_use(view_runs: Path) -> None:
    first, line = start_cli(view_runs)
    try:
        port = re.search(r":(\d+)/", line).group(1)
        proc = engine("view", view_runs, "--port", port, check=False)
        assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=20)


def test_a_long_comparison_shows_its_progress_until_it_is_ready(
    view_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    compare = pairing.compare_records

    def held(*args: object) -> dict:
        release.wait(30)  # the comparison cannot finish before the test has seen its progress page
        return compare(*args)

    monkeypatch.setattr(pairing, "compare_records", held)
    monkeypatch.setattr("viewer.state.State.compare_wait_s", 0.2)
    with ViewerThread(view_runs) as server:
        _, html, _ = get(server, "/compare", a="v1/out", b="v2/out")
        assert "<h1>Comparing v1 ⟷ v2</h1>" in html and "0 of 8 shared ids compared" in html
        assert '<meta http-equiv="refresh" content="1">' in html
        release.set()
        for _ in range(100):
            _, html, _ = get(server, "/compare", a="v1/out", b="v2/out")
            if "Comparing" not in html:
                break
            time.sleep(0.1)
    assert "8</b> ids answered in both" in html


def test_a_copy_of_a_seed_or_test_record_is_shown_beside_it(tmp_path: Path) -> None:
    run = tmp_path / "si"
    (run / "out" / "gen" / "rejected").mkdir(parents=True)
    (run / "pool.jsonl").write_text('{"id": "s1", "feature_content": "患者发热三天伴咳嗽"}\n', "utf-8")
    (run / "test.jsonl").write_text('{"id": "t1", "feature_content": "女，35岁，停经45天"}\n', "utf-8")
    (run / "spec.toml").write_text(
        '[run]\nname = "si"\n\n[[stages]]\nname = "gen"\ngenerator = "self_instruct"\n\n'
        '[[stages.filters]]\nkind = "leakage"\ntest = ["test.jsonl"]\n\n'
        '[[stages.filters]]\nkind = "rouge_dedupe"\nseed = "pool.jsonl"\n',
        "utf-8",
    )
    seed_copy = {"id": "g1", "feature_content": "患者发热两天伴咳嗽"}
    test_copy = {"id": "g2", "feature_content": "女，35岁，停经45天"}
    rejected = [
        {
            "id": "g1",
            "filter": "rouge_dedupe",
            "reason": "near-dup: 0.8 > 0.7 vs seed id 's1'",
            "record": seed_copy,
        },
        {
            "id": "g2",
            "filter": "leakage",
            "reason": "exact copy in test.jsonl: test id 't1'",
            "record": test_copy,
        },
    ]
    (run / "out" / "gen" / "rejected" / "shard-00000.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in rejected)
    )
    manifest = {"name": "si", "spec": str(run / "spec.toml"), "stages": {"gen": {"counts": {"rejected": 2}}}}
    (run / "out" / "manifest.json").write_bytes(orjson.dumps(manifest))
    with ViewerThread(tmp_path) as server:
        _, seeded, _ = get(server, "/record", run="si/out", stage="gen", id="g1")
        _, leaked, _ = get(server, "/record", run="si/out", stage="gen", id="g2")
    assert "Near-duplicate of seed id <code>s1</code>" in seeded and "(seed file pool.jsonl)" in seeded
    assert '<span class="d-removed">两</span>' in seeded and '<span class="d-added">三</span>' in seeded
    assert "Copies test id <code>t1</code>" in leaked and "(test file test.jsonl)" in leaked


def test_a_named_version_of_a_spec_is_listed_with_its_overrides_and_compared(
    view_runs: Path, tmp_path: Path, fake_server
) -> None:
    from tests.view_fixture import _answerer

    shutil.copytree(view_runs / "v2", tmp_path / "v2")
    spec = tmp_path / "v2" / "spec.toml"
    text = re.sub(r'base_url = "[^"]*"', f'base_url = "{fake_server.url}"', spec.read_text("utf-8"))
    spec.write_text(text, "utf-8")
    fake_server.set(answer=_answerer("v3"), models=None)
    engine("run", spec, "--set", "stages.dx.max_bad_output=3", "--as", "longer", "--quiet")
    with ViewerThread(tmp_path) as server:
        _, runs_html, _ = get(server, "/")
        _, compared, _ = get(server, "/compare", a="v2/out", b="v2/out-longer")
        _, record, _ = get(server, "/record", run="v2/out-longer", stage="dx", id="p09")
    assert 'href="/run?run=v2%2Fout-longer">longer</a>' in runs_html
    assert "stages.dx.max_bad_output=3" in runs_html
    assert "9</b> ids answered in both" in compared and "1 only in B" in compared
    assert "<h2>Input</h2>" in record and "双膝关节疼痛3年" in record
