"""The web pages in headless Debian Chromium (Playwright): upload an image, see the label and bars, a
layout without overlaps, feedback buttons, and the review page."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright

from greenr.data.upload_corpus import encode, photo
from greenr.ops.inbox import Inbox, LocalItemStore
from tests.helpers.images import jpeg_bytes, scene
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


BOXES = ("h1", "#drop", "#preview", "#result")


def overlaps(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_heading_drop_zone_preview_and_result_do_not_overlap(server: Server, tmp_path: Path) -> None:
    image = tmp_path / "wide.jpg"
    image.write_bytes(encode(photo((400, 300)), "JPEG"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 1000})
            page.goto(server.url + "/")
            page.set_input_files("#file", str(image))
            expect(page.locator("#label")).to_have_text(re.compile(f"^({'|'.join(CLASSES)})$"), timeout=30_000)
            page.wait_for_function("document.getElementById('preview').complete")
            boxes = {name: page.locator(name).bounding_box() for name in BOXES}
            assert all(box and box["height"] > 0 for box in boxes.values()), boxes
            for i, a in enumerate(BOXES):
                for b in BOXES[i + 1 :]:
                    assert not overlaps(boxes[a], boxes[b]), f"{a} {boxes[a]} overlaps {b} {boxes[b]}"  # type: ignore[arg-type]
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()


REVIEW_TOKEN = "page-review-token"


@pytest.fixture(scope="module")
def feedback_server(ckpt_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A real server with feedback on and its inbox in a folder of its own (FEEDBACK_INBOX=local)."""
    state = tmp_path_factory.mktemp("page-state")
    srv = Server(
        {
            "MODEL_PATH": str(ckpt_path),
            "MODEL_PULL": "false",
            "THREADS": "2",
            "FEEDBACK": "on",
            "FEEDBACK_INBOX": "local",
            "REVIEW_TOKEN": REVIEW_TOKEN,
            "GREENR_STATE_DIR": str(state),
        },
        state / "server.log",
    )
    try:
        srv.wait_ready()
        yield srv, state
    finally:
        srv.stop()


def test_wrong_button_sends_feedback_with_the_other_class(feedback_server: tuple[Server, Path], tmp_path: Path):
    server, state = feedback_server
    image = tmp_path / "meadow.jpg"
    image.write_bytes(jpeg_bytes(scene("dandelion", 50)))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.set_input_files("#file", str(image))
            expect(page.locator("#feedback")).to_be_visible(timeout=30_000)
            predicted = page.locator("#label").inner_text()
            other = next(c for c in CLASSES if c != predicted)
            expect(page.locator("#choices button")).to_have_count(len(CLASSES))
            page.get_by_role("button", name=f"Wrong: it is {other}").click()
            expect(page.locator("#thanks")).to_contain_text(
                f"Thanks: noted as {other}. It joins the training data once"
            )
            expect(page.locator("#choices button").first).to_be_disabled()
        finally:
            browser.close()
    record = Inbox(LocalItemStore(state / "inbox")).record(hashlib.sha256(image.read_bytes()).hexdigest())
    assert record is not None and record.label == other and record.predicted == predicted
    assert record.model_sha256 and record.confidence is not None


def test_review_page_labels_items_with_one_click(feedback_server: tuple[Server, Path]):
    server, state = feedback_server
    inbox = Inbox(LocalItemStore(state / "inbox"))
    waiting = [encode(scene("grass", 60), "PNG"), jpeg_bytes(scene("dandelion", 61))]
    for data in waiting:
        inbox.add_vote(data, label=None, source="uncertain", predicted="grass", confidence=0.52)
    # Also on review: a single vote sent from the page by the test before (fewer than 3 agreeing).
    ids = {r.sha256 for r in inbox.to_review()}
    assert {hashlib.sha256(d).hexdigest() for d in waiting} <= ids
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/review")
            page.fill("#token", "wrong-token")
            page.click("#login button")
            expect(page.locator("#error")).to_contain_text("Error 401", timeout=30_000)
            page.fill("#token", REVIEW_TOKEN)
            page.click("#login button")
            cards = page.locator("#items .item")
            expect(cards).to_have_count(len(ids), timeout=30_000)
            assert {cards.nth(i).get_attribute("data-id") for i in range(len(ids))} == ids
            for i in range(len(ids)):
                page.wait_for_function(
                    f"() => document.querySelectorAll('#items .item img')[{i}].naturalWidth > 0", timeout=30_000
                )
            first = cards.first.get_attribute("data-id")
            cards.first.get_by_role("button", name="grass").click()
            expect(cards).to_have_count(len(ids) - 1, timeout=30_000)
            expect(page.locator("#status")).to_have_text(f"{len(ids) - 1} item(s) wait for a reviewer")
        finally:
            browser.close()
    record = inbox.record(str(first))
    assert record is not None and record.label == "grass" and record.reviewed


def test_page_is_served(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert 'id="drop"' in response.text and "predict" in response.text
