"""The report page as a reader sees it: index.html in headless Chromium (Debian's `chromium`
package, which .ci/run installs) loads with no console errors, shows the comparison table
and every figure, and fits a laptop screen's width."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from flowarena.reports.report import build_report
from tests.test_report import make_run

LAPTOP = {"width": 1366, "height": 768}
# the flags that keep Chromium from reaching for the network in a closed sandbox
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("FLOWARENA_REQUIRE_BROWSER"):  # CI: a missing browser is a failure
        pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed here; .ci/run installs it (apt-get install chromium)")


def test_index_html_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    run = make_run(tmp_path / "run", seeds=(0, 1))
    out = build_report(run)
    errors: list[str] = []
    shot = tmp_path / "page.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=FLAGS)
        try:
            page = browser.new_page(viewport=LAPTOP)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out["index"].as_uri(), wait_until="load")
            page.screenshot(path=str(shot), full_page=True)
            rows = page.locator("table").first.locator("tbody tr").all_inner_texts()
            tables = page.locator("table").count()
            headline_overflow = page.evaluate(
                "() => { const d = document.querySelector('.scroll');"
                " return d.scrollWidth - d.clientWidth; }")
            images = page.evaluate("() => Array.from(document.images, i => [i.complete, i.naturalWidth])")
            captions = page.locator("figcaption").count()
            page_width = page.evaluate("() => document.documentElement.scrollWidth")
        finally:
            browser.close()

    assert errors == []
    assert tables == 3  # the headline scores, skills and atom counts, then the paired comparison
    assert headline_overflow <= 0  # the headline table fits a laptop screen without scrolling
    assert len(rows) == 3 and rows[0].startswith("toy") and "grpo" in rows[2]  # base, dppo, grpo
    assert len(images) == len(out["figures"]) == captions
    assert all(complete and width > 200 for complete, width in images)  # every figure decoded
    assert page_width <= LAPTOP["width"]  # wide tables scroll in their own box, not the page
    with Image.open(shot) as im:
        assert im.width == LAPTOP["width"] and im.height > 5 * LAPTOP["height"]  # all figures below
        assert np.asarray(im.convert("L")).std() > 20  # not a blank page
