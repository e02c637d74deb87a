"""Fixtures for the dashboard's browser tests: one `nograd serve` (fake model, embedded worker) per test module, a
tenant key, and a page in real headless Chromium (Debian's chromium driven by Playwright) on which any console
error fails the test."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest
from dashpages import DOCS, STATIC
from procs import create_key, free_port, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(base URL, tenant key) of a fresh service whose worker serves `fake:0.1` (0.1 s per batch)."""
    data = tmp_path_factory.mktemp("dash") / "data"
    key = create_key(data, "web")
    port = free_port()
    proc = serve(data, None, port, models="fake:0.1")
    yield f"http://127.0.0.1:{port}", key
    proc.terminate()


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """Where the tests save their screenshots: README's docs/ with NOGRAD_UPDATE_SCREENSHOTS=1, else a temp folder,
    so a test run leaves the tracked screenshots alone."""
    return DOCS if os.environ.get("NOGRAD_UPDATE_SCREENSHOTS") == "1" else tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def rest(service):
    """An httpx client on the service's REST API with the tenant's key."""
    url, key = service
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


def _explain_js_missing(message) -> bool:
    # explain.js (the "what was learned" panel) is another part's file: until it lands, its <script> tag 404s.
    # Chromium logs the 404, then its refusal to run the JSON error body as a script.
    mentioned = "/static/explain.js" in message.text or message.location.get("url", "").endswith("/static/explain.js")
    return mentioned and not (STATIC / "explain.js").exists()


@pytest.fixture
def page(service, tmp_path):
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (scripts/setup.sh test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors = []

    def on_console(message):
        if message.type == "error" and not _explain_js_missing(message):
            errors.append(message.text)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", on_console)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(30_000)
        page.expected_statuses = set()  # HTTP errors a test provokes on purpose; Chromium logs each one
        yield page
        browser.close()
    provoked = [f"status of {code} " for code in page.expected_statuses]
    unexpected = [e for e in errors if not (e.startswith("Failed to load resource") and any(p in e for p in provoked))]
    assert unexpected == [], unexpected
