"""A wheel install has every command: build the wheel offline, install it into a fresh virtual environment
(its dependencies come from the project's own environment through a .pth file), and ask every command for
its help from a folder outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.engine_helpers import ROOT

EXPECTED = {
    "run",
    "status",
    "export",
    "filter",
    "runs",
    "eval",
    "train",
    "distill",
    "import",
    "select",
    "view",
    "demos",
}
BEFORE_ARGPARSE = [["runs", "note"], ["filter", "dedupe"], ["filter", "leakage"]]  # dispatched by hand


def project_files() -> list[str]:
    """The repository's files as git sees them (tracked, or new and not ignored), else a walk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [f for f in out.splitlines() if (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", "build", "dist"}
        return [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and p.suffix != ".pyc"
        ]


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_wheel_has_every_package_file_and_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert {"engine", "sources", "evals", "trainers"} <= set(packages)
    files = [
        f for f in project_files() if f.split("/")[0] in packages or f in ("pyproject.toml", "README.md")
    ]

    # build from a copy, so the repository gets no build/ folder
    source = tmp_path / "source"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp_path, source,
        cwd=tmp_path, env=env)  # fmt: skip
    (wheel,) = tmp_path.glob("distill_engine-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(f for f in files if f.split("/")[0] in packages and f not in inside)
    assert not missing, f"files missing from the wheel (pyproject's packages / package-data): {missing}"

    # a fresh environment whose dependencies are the project's own (offline), then the wheel alone
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path, env=env
    )
    Path(site.stdout.strip(), "_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", "-q", wheel,
        cwd=tmp_path, env=env)  # fmt: skip
    own = Path(sysconfig.get_paths()["purelib"])
    assert any(own.glob("distill_engine-*.dist-info")), "the project's own install must be left alone"

    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing imports from the source tree
    elsewhere.mkdir()
    where = run(
        python,
        "-c",
        "import engine, sources; print(engine.__file__, sources.__file__)",
        cwd=elsewhere,
        env=env,
    )
    assert all(path.startswith(str(venv)) for path in where.stdout.split())
    script = venv / "bin" / "engine"
    top = run(script, "--help", cwd=elsewhere, env=env).stdout
    commands = set(re.search(r"\{([a-z,]+)\}", top).group(1).split(","))
    assert EXPECTED <= commands and "unavailable" not in top
    for command in ("import", "select"):  # the commands a wheel without `sources` lost
        assert run(script, command, "--help", cwd=elsewhere, env=env).stdout.startswith(
            f"usage: engine {command}"
        )
    # every command's help, in one process (a process each costs ~1.5 s on a busy 2-core machine)
    every = [[c] for c in sorted(commands)] + BEFORE_ARGPARSE
    out = run(python, "-c", ASK_EVERY_HELP, repr(every), cwd=elsewhere, env=env).stdout
    helps = out.split("\0")[:-1]
    assert len(helps) == len(every)
    for command, text in zip(every, helps, strict=True):
        assert f"engine {' '.join(command)} [-h]" in text.splitlines()[0], (command, text[:200])
        assert "unavailable" not in text, (command, text[:200])


ASK_EVERY_HELP = """
import ast, contextlib, io, sys
from engine.cli import main
for command in ast.literal_eval(sys.argv[1]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        main([*command, "--help"])
    sys.stdout.write(buffer.getvalue() + "\\0")
"""
