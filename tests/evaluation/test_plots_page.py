"""`dvc plots show` writes a page that renders in a browser without any network."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from greenr.evaluation import plots_page
from tests.helpers.processes import CHROMIUM_ARGS, chromium
from tests.helpers.project import REPO, VENV_BIN, project_env, run


def test_dvc_plots_show_renders_every_chart_offline(tmp_path: Path) -> None:
    template = plots_page.template_path()
    if not template.is_file():
        pytest.fail(f"{template} is missing: run `make setup` (or `greenr plots-template`)", pytrace=False)
    out = tmp_path / "plots"
    env = project_env(REPO, tmp_path / "state")
    run([str(VENV_BIN / "dvc"), "plots", "show", "--out", str(out)], REPO, env)
    page_html = (out / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in page_html and "vegaEmbed(" in page_html
    charts = page_html.count("vegaEmbed(")
    assert charts >= 5  # loss, accuracy, confusion matrix, ROC, precision-recall

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto((out / "index.html").as_uri())
            page.wait_for_function(
                "n => document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length >= n",
                arg=charts,
                timeout=30_000,
            )
            drawn = page.evaluate(
                "() => [...document.querySelectorAll('.vega-embed canvas')].filter(c => c.width > 50).length"
            )
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requests if not url.startswith("file://")] == []
    assert drawn >= charts
