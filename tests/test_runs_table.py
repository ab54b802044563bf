"""`engine runs` at the first user's scale: 14 versions with statistics, metrics, scores and Chinese notes
stay within 120 columns, `--only` selects by glob, and the plot's run labels do not overlap."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine import history
from engine.runs_table import display_width, format_table
from tests.engine_helpers import engine

# the seed notes' versions: (name, what changed, reasons, chars, diseases, score)
VERSIONS = [
    ("v1", "zero_shot", 1.4, 169, 1.0, 1765),
    ("v2", "few_shot", 2.6, 193, 1.1, 1799),
    ("v3", "两阶段（疾病->诊断依据）+ few_shot", 5.1, 249, 1.0, 1603),
    ("v4", "LLM prompt + few_shot", 2.5, 143, 1.8, 1914),
    ("v5", "deepseek V3 + few_shot", 3.8, 147, 1.5, 2097),
    ("v6", "deepseek V3 + 两阶段 + few_shot", 4.8, 195, 2.3, 2267),
    ("v7", "蒸馏数据6300 lora 微调 + zero_shot", 5.2, 245, 2.1, 2105),
    ("v8", "deepseek V3 + LLM prompt + few_shot", 3.1, 121, 1.6, 2125),
    ("v9", "上面lora微调 + few_shot 新5000条", 4.9, 225, 1.9, 2746),
    ("v10", "将所有8000条数据标注后 共1.4w条数据 lora 微调 + few_shot", 4.9, 252, 1.6, 2762),
    ("v11", "在第一版微调的模型的基础上继续拿后面8000条数据进行微调", 3.6, 179, 1.8, 2810),
    ("v12", "在v11的训练的基础上取第200步的cp进行few_shot预测", 3.6, 176, 1.8, 2811),
    ("v11_1", "v11的基础上对疾病的标号处理一下看看分数的变化 全分号", 3.6, 179, 1.8, None),
    ("v11_2-without-disease-numbering", "无分号", 3.6, 179, 1.8, None),
]


def write_history(root: Path) -> None:
    for n, (name, note, reasons, chars, diseases, score) in enumerate(VERSIONS):
        out = root / name / "out"
        out.mkdir(parents=True)
        manifest = {
            "name": name,
            "created": f"2025-03-{n + 1:02d}T00:00:00Z",
            "description": f"medical predict, version {name}",
            "overrides": [f"stages.predict.k={n}", "providers.teacher.model=deepseek-chat"],
            "providers": {"teacher": {"kind": "openai", "model": "deepseek-chat", "requests": 500}},
            "stages": {
                "predict": {
                    "counts": {"kept": 500, "rejected": n, "failed": 0},
                    "stats": {
                        "mean_reasons": reasons,
                        "mean_reason_chars": chars,
                        "mean_diseases": diseases,
                        "mean_record_chars": 258.0,
                    },
                }
            },
        }
        (out / "manifest.json").write_bytes(orjson.dumps(manifest))
        (out / "predict").mkdir()
        report = {"diseases": {"f1": 0.5 + n / 100}, "reason": {"f1": 0.4}, "combined": 0.45 + n / 200}
        (out / "predict" / history.EVAL).write_bytes(orjson.dumps(report))
        notes = {"text": note} | ({"score": float(score)} if score is not None else {})
        (out / history.NOTES).write_bytes(orjson.dumps(notes))


def test_fourteen_versions_fit_120_columns(tmp_path: Path) -> None:
    write_history(tmp_path)
    rows = history.table(history.find_runs(tmp_path))
    assert len(rows) == 14
    text = format_table(rows, width=120)
    lines = text.splitlines()
    assert all(display_width(line) <= 120 for line in lines), max(map(display_width, lines))
    header = lines[0].split()
    # the numbers the user compares stay, under short names with a legend
    assert header[:8] == ["name", "reas", "reas_chars", "dise", "dise.f1", "comb", "score", "delta"]
    assert "reas_chars = mean_reason_chars" in text
    names = [line.split()[0] for line in lines[1:15]]
    assert names == [v[0] for v in VERSIONS[:13]] + ["v11_2-without-disea…"]
    assert lines[12].split()[6:8] == ["2811", "+1"]  # v12's score and its change from v11
    assert "在第一版微调…" in lines[11]  # a long note is cut, not wrapped
    assert "same in every run: stage predict, kept 500, failed 0, mean_record_chars 258" in text
    assert lines[-1].startswith("hidden to fit 120 characters: rejected, date")


def test_a_wide_terminal_shows_everything(tmp_path: Path) -> None:
    write_history(tmp_path)
    text = format_table(history.table(history.find_runs(tmp_path)), width=400)
    assert "mean_reason_chars" in text.splitlines()[0] and "hidden" not in text and "…" not in text
    assert "same in every run" not in text  # it fits: nothing moved
    assert "将所有8000条数据标注后 共1.4w条数据 lora 微调 + few_shot" in text


def test_only_selects_runs_by_glob(tmp_path: Path) -> None:
    write_history(tmp_path)
    rows = orjson.loads(engine("runs", tmp_path, "--only", "v11*", "--only", "v1", "--json").stdout)
    assert [r["name"] for r in rows] == ["v1", "v11", "v11_1", "v11_2-without-disease-numbering"]
    assert rows[1]["delta"] == 2810 - 1765  # deltas run over the runs shown
    shown = engine("runs", tmp_path, "--only", "v1?").stdout  # piped: 120 columns
    assert [line.split()[0] for line in shown.splitlines()[1:4]] == ["v10", "v11", "v12"]
    assert all(len(line) <= 120 for line in shown.splitlines())
    assert engine("runs", tmp_path, "--only", "nothing*").stdout.strip() == "no runs found"


def test_plot_labels_stay_readable_with_many_runs(tmp_path: Path) -> None:
    write_history(tmp_path)
    rows = history.table(history.find_runs(tmp_path))
    fig = history.figure(rows)
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    labels = [t for t in axes[-1].get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels][:2] == ["v1", "v2"] and len(labels) == 14
    assert labels[-1].get_text() == "v11_2-without-dis…"  # cut to 18 characters
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), "labels overlap"
    width, height = fig.canvas.get_width_height()
    assert all(b.x0 >= 0 and b.x1 <= width and b.y0 >= 0 for b in boxes), "labels cut off"
    assert not any(t.get_visible() and t.get_text() for ax in axes[:-1] for t in ax.get_xticklabels())
    png = tmp_path / "history.png"
    history.plot(rows, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
