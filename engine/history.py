"""The run history: one row per run (manifest, task stats, offline metrics, the leaderboard score the
user noted), the delta to the previous run, a plot, and a diff of two runs' answers on the same ids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import orjson

from engine.atomic import write_json_atomic
from engine.errors import SpecError
from engine.runs_table import clip
from engine.store import read_outcome

NOTES = "notes.json"  # beside manifest.json: {"score": float, "text": str}
EVAL = "eval.json"  # beside a stage's kept/: what `engine eval SPEC:STAGE` measured


@dataclass
class Run:
    out_dir: Path
    manifest: dict[str, Any]
    notes: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.out_dir.name)

    @property
    def last_stage(self) -> str | None:
        stages = self.manifest.get("stages") or {}
        return list(stages)[-1] if stages else None

    def row(self) -> dict[str, Any]:
        m = self.manifest
        models = sorted(
            {f"{p['kind']}/{p['model']}" for p in m.get("providers", {}).values() if p.get("requests")}
        )
        stage = self.last_stage
        info = m["stages"].get(stage, {}) if stage else {}
        row: dict[str, Any] = {
            "name": self.name,
            "date": m.get("created", "")[:10],
            "description": m.get("description", ""),
            "models": ", ".join(models) or "-",
            "stage": stage or "-",
            "kept": info.get("counts", {}).get("kept", 0),
            "rejected": info.get("counts", {}).get("rejected", 0),
            "failed": info.get("counts", {}).get("failed", 0),
            "overrides": m.get("overrides") or [],  # `engine run --set` items of a named run
        }
        row.update({k: v for k, v in info.get("stats", {}).items() if isinstance(v, int | float)})
        metrics = self.metrics(stage)
        row.update(metrics)
        row["score"] = self.notes.get("score")
        row["note"] = self.notes.get("text", "")
        return row

    def metrics(self, stage: str | None) -> dict[str, float]:
        path = self.out_dir / (stage or "") / EVAL
        if not stage or not path.exists():
            return {}
        report = orjson.loads(path.read_bytes())
        found = {}
        for group in ("diseases", "reason"):
            if isinstance(report.get(group), dict) and "f1" in report[group]:
                found[f"{group}.f1"] = report[group]["f1"]
        if isinstance(report.get("combined"), int | float):
            found["combined"] = report["combined"]
        return found


def find_runs(root: Path) -> list[Run]:
    """Every folder under `root` holding a run manifest, oldest first. Other files of that name (a top-k
    store's, a model's) are no runs: a run manifest has its `stages`."""
    runs = []
    for manifest in root.rglob("manifest.json"):
        try:
            data = orjson.loads(manifest.read_bytes())
        except orjson.JSONDecodeError:  # no run's: the engine writes its manifests atomically
            continue
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            continue
        notes_path = manifest.parent / NOTES
        notes = orjson.loads(notes_path.read_bytes()) if notes_path.exists() else {}
        runs.append(Run(manifest.parent, data, notes))
    return sorted(runs, key=lambda r: (r.manifest.get("created", ""), r.name))


def select(runs: list[Run], globs: list[str] | None) -> list[Run]:
    """The runs whose name (or output folder's name) matches one of the shell-style globs; all without."""
    if not globs:
        return runs
    return [r for r in runs if any(fnmatch(r.name, g) or fnmatch(r.out_dir.name, g) for g in globs)]


def find_run(root: Path, name: str) -> Run:
    matches = [r for r in find_runs(root) if r.name == name or r.out_dir.name == name]
    if not matches:
        known = ", ".join(r.name for r in find_runs(root)) or "none"
        raise SpecError(f"no run named {name!r} under {root} (runs: {known})")
    return matches[-1]


def note(root: Path, name: str, score: float | None, text: str | None) -> Run:
    run = find_run(root, name)
    if score is not None:
        run.notes["score"] = score
    if text is not None:
        run.notes["text"] = text
    write_json_atomic(run.out_dir / NOTES, run.notes)
    return run


def table(runs: list[Run]) -> list[dict[str, Any]]:
    """Rows oldest first, each with the score's change from the previous scored run."""
    rows, previous = [], None
    for run in runs:
        row = run.row()
        if row["score"] is not None:
            row["delta"] = None if previous is None else row["score"] - previous
            previous = row["score"]
        rows.append(row)
    return rows


LABEL_CHARS = 18  # run names on the plot's x axis are cut to this many characters


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Score and every numeric statistic that changes, per run, one small panel each: a trend reads faster
    than a table."""
    import matplotlib.pyplot as plt

    fig = figure(rows)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(rows: list[dict[str, Any]]) -> Any:
    """The plot's figure. Runs sit at positions 0..n-1 (two runs of one name stay two points), the panels
    share one x axis labelled once at the bottom, and the labels turn upright when there are many runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"rejected", "failed", "delta", "score"}
    keys: list[str] = []
    for row in rows:  # runs of different specs may have different statistics
        keys += [k for k, v in row.items() if k not in skip and k not in keys and isinstance(v, int | float)]
    if len(rows) > 1:  # a flat line says nothing; the table's footer names those values
        keys = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    if any(r.get("score") is not None for r in rows):
        keys.insert(0, "score")
    keys = keys or ["kept"]
    n = len(rows)
    size = (min(max(6.0, 0.45 * n + 2), 40.0), 1.8 * len(keys) + 1.2)
    fig, axes = plt.subplots(len(keys), 1, figsize=size, sharex=True, squeeze=False)
    positions = list(range(n))
    for ax, key in zip(axes[:, 0], keys, strict=True):
        values = [r.get(key) if isinstance(r.get(key), int | float) else float("nan") for r in rows]
        ax.plot(positions, values, marker="o")
        ax.set_ylabel(key, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xticks(positions)
    bottom.set_xticklabels([clip(str(r["name"]), LABEL_CHARS) for r in rows], fontsize=8)
    bottom.set_xlim(-0.5, n - 0.5)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in bottom.get_xticklabels()]
    if any(a.x1 + 2 > b.x0 for a, b in zip(boxes, boxes[1:], strict=False)):  # side by side they collide
        bottom.tick_params(axis="x", labelrotation=90)
        fig.tight_layout()
    return fig


def kept_records(run: Run, stage: str | None = None) -> Iterator[dict[str, Any]]:
    stage = stage or run.last_stage
    if stage is None:
        return iter(())
    return read_outcome(run.out_dir / stage, "kept")


def diff(a: Run, b: Run, *, fields: list[str] | None = None, top: int = 5) -> dict[str, Any]:
    """What changed between two runs' answers on the same ids: per field, the ids whose value changed,
    the mean length change, and the largest differences."""
    left = {str(r["id"]): r for r in kept_records(a)}
    right = {str(r["id"]): r for r in kept_records(b)}
    shared = sorted(left.keys() & right.keys())
    if fields is None:
        sample = [left[i] for i in shared[:50]]
        fields = sorted(
            {k for r in sample for k, v in r.items() if isinstance(v, list | str)} - {"id", "meta"}
        )
        fields = [f for f in fields if any(left[i].get(f) != right[i].get(f) for i in shared)]
    report: dict[str, Any] = {
        "a": a.name,
        "b": b.name,
        "shared": len(shared),
        "only_a": len(left.keys() - right.keys()),
        "only_b": len(right.keys() - left.keys()),
        "fields": {},
    }
    for field in fields:
        changed, deltas = [], []
        for rid in shared:
            va, vb = left[rid].get(field), right[rid].get(field)
            if va != vb:
                changed.append(rid)
            deltas.append((_length(vb) - _length(va), rid))
        deltas.sort(key=lambda d: abs(d[0]), reverse=True)
        report["fields"][field] = {
            "changed": len(changed),
            "changed_ids": changed[:20],
            "mean_length_change": sum(d for d, _ in deltas) / len(deltas) if deltas else 0.0,
            "mean_items_a": _mean_items(left, shared, field),
            "mean_items_b": _mean_items(right, shared, field),
            "largest": [
                {"id": rid, "length_change": d, "a": left[rid].get(field), "b": right[rid].get(field)}
                for d, rid in deltas[:top]
                if d
            ],
        }
    return report


def _length(value: Any) -> int:
    if isinstance(value, list):
        return sum(len(str(v)) for v in value)
    return len(str(value)) if value is not None else 0


def _mean_items(records: dict[str, dict[str, Any]], ids: list[str], field: str) -> float | None:
    lists = [records[i].get(field) for i in ids if isinstance(records[i].get(field), list)]
    return sum(len(v) for v in lists) / len(lists) if lists else None


def format_diff(report: dict[str, Any]) -> str:
    lines = [
        f"{report['a']} -> {report['b']}: {report['shared']} shared ids "
        f"({report['only_a']} only in {report['a']}, {report['only_b']} only in {report['b']})"
    ]
    for field, info in report["fields"].items():
        items = ""
        if info["mean_items_a"] is not None:
            items = f", items per answer {info['mean_items_a']:.2f} -> {info['mean_items_b']:.2f}"
        lines.append(
            f"{field}: {info['changed']} ids changed, mean length change "
            f"{info['mean_length_change']:+.1f} chars{items}"
        )
        for big in info["largest"]:
            lines.append(f"    {big['id']}: {big['length_change']:+d} chars")
    return "\n".join(lines)
