"""`engine view` in a real browser (headless Chromium): what a person sees on the runs page, a run, a
record and a comparison, with Chinese text drawn in real glyphs and the differences highlighted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chrome, missing
from tests.view_fixture import ViewerThread

# Draws characters on a canvas in the page's font and returns their pixels: a font without CJK glyphs
# draws every one of them as the same empty box, so distinct pixels mean real glyphs.
GLYPHS = """
const font = getComputedStyle(document.body).fontFamily;
const canvas = document.createElement("canvas");
canvas.width = 40; canvas.height = 40;
const ctx = canvas.getContext("2d");
return arguments[0].map((ch) => {
  ctx.clearRect(0, 0, 40, 40);
  ctx.font = "28px " + font;
  ctx.fillText(ch, 4, 30);
  return Array.from(ctx.getImageData(0, 0, 40, 40).data).join(",");
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    with chrome() as driver:
        yield driver


@pytest.fixture(scope="module")
def viewer(view_runs: Path) -> Iterator[ViewerThread]:
    with ViewerThread(view_runs) as server:
        yield server


def text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def wait_for(driver: Any, css: str, words: str) -> None:
    """Until the page (after a click, or a progress page reloading itself) shows `words` in `css`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    located = (By.CSS_SELECTOR, css)
    WebDriverWait(driver, 30).until(expected_conditions.text_to_be_present_in_element(located, words))


def test_a_person_reads_runs_a_run_a_record_and_a_comparison(browser: Any, viewer: ViewerThread) -> None:
    from selenium.webdriver.common.by import By

    browser.get(viewer.url + "/")
    assert browser.title == "Runs · engine view"
    table = text(browser, "table.runs")
    assert "v1" in table and "1,765" in table and "两阶段（疾病->诊断依据）" in table
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) >= 4
    pixels = browser.execute_script(GLYPHS, ["诊", "断", "\ue000"])  # two CJK characters, a private-use box
    assert len(set(pixels)) == 3, "Chinese characters are drawn as boxes: no CJK font (make system-deps)"

    # tick two runs: the button names them and opens their comparison
    button = browser.find_element(By.ID, "compare-button")
    assert not button.is_enabled()
    boxes = browser.find_elements(By.CSS_SELECTOR, "input[name=run]")
    boxes[1].click()
    boxes[2].click()
    assert button.is_enabled() and button.text == "Compare v2 ⟷ v3"
    assert not boxes[0].is_enabled()  # a third cannot be ticked
    button.click()
    wait_for(browser, "p.summary", "9 ids answered in both")
    assert "/compare?" in browser.current_url
    card = browser.find_element(By.ID, "id-p01")
    added = card.find_elements(By.CSS_SELECTOR, "li.d-added")
    assert "+ 2型糖尿病" in [li.text for li in added]
    colour = added[0].value_of_css_property("background-color")
    assert colour not in ("rgba(0, 0, 0, 0)", "transparent")  # the highlight is visible
    removed = card.find_element(By.CSS_SELECTOR, "li.d-removed")
    assert removed.text == "− 高血压" and removed.value_of_css_property("background-color") != colour
    assert "mean reasons per answer" in text(browser, ".charts")

    # a run: counts, then a search in Chinese through the form
    browser.get(viewer.url + "/")
    browser.find_element(By.LINK_TEXT, "v2").click()
    wait_for(browser, "table.stages", "rouge_dedupe: near-duplicate 1")
    search = browser.find_element(By.NAME, "q")
    search.send_keys("胆囊")
    search.submit()
    wait_for(browser, "p.found", "2 records match")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.records tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.id").text for r in rows] == ["p04", "p05"]

    # a record: the near-duplicate beside the record it duplicates, the differences marked
    browser.find_element(By.LINK_TEXT, "p05").click()
    wait_for(browser, ".callout", "Rejected by rouge_dedupe")
    side = browser.find_element(By.CSS_SELECTOR, "table.side")
    assert "p04" in side.text and "右上腹痛伴恶心" in side.text
    assert [s.text for s in side.find_elements(By.CSS_SELECTOR, "span.d-added")][:1] == ["1"]
    assert "teacher" in text(browser, "table.usage") and "qwen2.5-72b" in text(browser, "table.usage")
