"""The dashboard in a real browser: Debian's Chromium, driven by Playwright's Python package
(its own browser builds are never downloaded), against the real platform started as
processes, once per module. Every test leaves a screenshot of the page it ended on in
test-output/screenshots/ (git ignores it), and fails if the page threw or the
Content-Security-Policy refused anything."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ROOT, create_database, drop_database
from tests.e2e.conftest import Platform, running_platform

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = ROOT / "test-output" / "screenshots"


def skip_without_a_browser() -> None:
    """Called at the top of each browser test module: skips it, saying why, where the
    browser or its driver is missing."""
    pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright's Python package is missing: pip install -r requirements-dev.txt",
    )
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: `make debs` installs Debian's chromium package",
            allow_module_level=True,
        )


@pytest.fixture(scope="module")
def platform(
    server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """The platform, once per module, on a database of its own."""
    database_url = create_database(server_urls[0])
    try:
        with running_platform(
            database_url, server_urls[1], tmp_path_factory.mktemp("logs")
        ) as running:
            yield running
    finally:
        drop_database(server_urls[0], database_url)


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: "Browser", request: pytest.FixtureRequest) -> Iterator["Page"]:
    """A fresh browser context (its own sessionStorage) and page. Afterwards: a screenshot
    named after the test, and the page must not have thrown or met a CSP refusal."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    try:
        yield page
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
        context.close()
    assert problems == []


def sign_in(page: "Page", platform: Platform, role: str) -> None:
    """Signs in as the dashboard's person does: pastes a token."""
    page.goto(f"{platform.url}/")
    page.fill("textarea[name=token]", platform.token(role))
    page.click("form.sign-in button[type=submit]")
    from playwright.sync_api import expect

    expect(page.locator("#who")).to_contain_text(f"· {role}")
    expect(page.locator("#live")).to_have_attribute("data-status", "live")


def screenshot(page: "Page", name: str) -> None:
    """A screenshot of a moment in the middle of a test."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="session", autouse=True)
def _fresh_screenshots() -> None:
    """Screenshots are of this run only."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
