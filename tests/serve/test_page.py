"""The web page in headless Debian Chromium (Playwright): upload an image, see the label and bars."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.helpers.images import encode, photo
from tests.helpers.processes import CHROMIUM_ARGS, chromium
from tests.helpers.serving import CLASSES, Server


def test_upload_shows_label_and_probability_bars(server: Server, tmp_path: Path) -> None:
    executable = chromium()
    image = tmp_path / "dandelion.jpg"
    image.write_bytes(encode(photo((120, 90)), "JPEG"))
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not a picture")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            expect(page.locator("h1")).to_contain_text("Dandelion or grass")
            page.set_input_files("#file", str(image))
            label = page.locator("#label")
            expect(label).to_have_text(re.compile(f"^({'|'.join(CLASSES)})$"), timeout=30_000)
            bars = page.locator("#bars .bar")
            expect(bars).to_have_count(len(CLASSES))
            widths = [
                bars.nth(i).locator(".fill").evaluate("e => parseFloat(e.style.width)") for i in range(len(CLASSES))
            ]
            assert abs(sum(widths) - 100) < 0.5
            assert widths == sorted(widths, reverse=True)
            expect(page.locator("#model")).to_contain_text("resnet18")
            # A bad file shows the server's message instead of a label.
            page.set_input_files("#file", str(not_image))
            expect(page.locator("#error")).to_contain_text("Error 400", timeout=30_000)
            expect(label).to_have_text("")
        finally:
            browser.close()
