"""docs/scale.md's promise for machines without a shared filesystem: each shard runs in its own copy of the
run folder, and copying the shard outputs into one run folder gives a run that `status` and `export`
read as one (every record once, usage counted once per shard)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import orjson

from tests.engine_helpers import engine, write_spec
from tests.test_pipeline import CHAINED


def test_shard_folders_copied_into_one_run_are_read_as_one(tmp_path: Path, fake_server) -> None:
    machines = [tmp_path / f"machine-{i}" for i in (1, 2)]
    for i, folder in enumerate(machines, 1):
        folder.mkdir()
        spec = write_spec(folder, fake_server.url, cases=30, stages=CHAINED)
        engine("run", spec, "--shard", f"{i}/2", "--quiet")

    gathered = tmp_path / "gathered"  # the run folder on the machine that collects: spec and inputs
    gathered.mkdir()
    for name in ("spec.toml", "cases.jsonl"):
        shutil.copy(machines[0] / name, gathered / name)
    for folder in machines:  # what `rsync -a --ignore-existing host:run/out/ run/out/` does
        for path in (folder / "out").rglob("*"):
            if "locks" in path.relative_to(folder / "out").parts:  # rsync --exclude locks/
                continue
            target = gathered / "out" / path.relative_to(folder / "out")
            if path.is_file():
                assert not target.exists(), f"two shards wrote {target.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)

    status = orjson.loads(engine("status", gathered / "spec.toml", "--json").stdout)
    done = {"kept": 30, "rejected": 0, "failed": 0, "pending": 0}
    assert status["stages"]["first"]["counts"] == done and status["stages"]["second"]["counts"] == done
    # 30 records, two stages, plus one preflight per shard, from both shards' spend ledgers
    assert status["providers"]["teacher"]["ok"] == 62
    exported = engine("export", gathered / "spec.toml", "--stage", "second").stdout.splitlines()
    ids = Counter(orjson.loads(line)["id"] for line in exported)
    assert len(ids) == 30 and set(ids.values()) == {1}
