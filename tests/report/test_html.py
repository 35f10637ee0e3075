"""report.html in a real browser: one self-contained file whose every image loads (decoded by
Chromium, not just present in the text) and whose tables are there."""

from __future__ import annotations

import json
import re

from .browser import headless_chromium
from .conftest import SEEDED_METHODS, SEEDS

IMAGES = """return Array.from(document.images).map(
    img => ({alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));"""
ROWS = (
    "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr')).map(tr => tr.cells[0].textContent);"
)


def test_report_html_is_self_contained(seeded):
    text = (seeded[0] / "report" / "report.html").read_text()
    # nothing outside the file: every image is a data: URL, no script, no stylesheet link, no URL
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "<script" not in text and "<link" not in text and "http://" not in text and "https://" not in text


def test_every_image_loads_and_the_tables_are_there(seeded):
    folder = seeded[0] / "report"
    report = json.loads((folder / "report.json").read_text())
    with headless_chromium() as browser:
        browser.get((folder / "report.html").resolve().as_uri())
        images = browser.execute_script(IMAGES)
        summary = browser.execute_script(ROWS, "summary")
        groups = browser.execute_script(ROWS, "groups")
        paired = browser.execute_script(ROWS, "paired")
    assert [image["alt"] for image in images] == report["plots"]
    for image in images:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
    assert summary == [f"{m}/seed-{s}" for m in SEEDED_METHODS for s in SEEDS]
    assert groups == list(SEEDED_METHODS) and paired == ["flexlora - raflora"]


def test_the_sweep_table_in_the_browser(swept):
    with headless_chromium() as browser:
        browser.get((swept / "report" / "report.html").resolve().as_uri())
        points = browser.execute_script(ROWS, "sweep")
        loaded = browser.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"
        )
    assert points == ["point-1", "point-2", "point-3"] and loaded
