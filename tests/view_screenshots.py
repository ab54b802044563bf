"""The screenshots in docs/view.md: `python -m tests.view_screenshots docs/img`.

Builds the viewer's test runs (tests/view_fixture.py) in a temporary folder, serves them, and saves one
PNG per page (runs, a run, a record, a comparison), reduced to a 256-colour palette to stay small.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tests.browser import chrome, full_page_screenshot, missing
from tests.server import FakeServer
from tests.view_fixture import ViewerThread, build

PAGES = {
    "view-runs.png": "/",
    "view-run.png": "/run?run=v2/out&stage=dx",
    "view-record.png": "/record?run=v2/out&stage=dx&id=p05&outcome=rejected",
    "view-compare.png": "/compare?a=v2/out&b=v3/out",
}


def main(target: Path) -> None:
    reason = missing()
    if reason:
        raise SystemExit(reason)
    target = target.resolve()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the pages then show the folder as `runs`, not a temporary path
        with FakeServer() as fake:
            build(Path(tmp) / "runs", fake)
        with ViewerThread(Path("runs")) as server, chrome() as driver:
            for name, path in PAGES.items():
                driver.get(server.url + path)
                full_page_screenshot(driver, str(target / name), width=1400, max_height=1500)
                image = Image.open(target / name).convert("RGB")
                image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target / name, optimize=True)
                size = (target / name).stat().st_size
                print(f"{target / name}: {image.width}x{image.height}, {size:,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
