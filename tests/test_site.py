"""The course site (``make site``): built offline from the stored notebooks, then rendered in
headless Chromium.

The build is the one ``make site`` makes, in build/site/: reused when it is newer than every
notebook, docs/ file and qlearn module, rebuilt here otherwise. The browser tests open the
built index and the first chapter through selenium and Debian's chromium + chromium-driver
(``make browser`` installs them; ``make test`` does so first and sets QLEARN_REQUIRE_BROWSER=1,
so that there a missing browser fails instead of skipping; QLEARN_CHROMIUM and
QLEARN_CHROMEDRIVER point elsewhere). Their screenshots are saved under
build/site-screenshots/ and their paths are printed in the test output, whatever pytest's
capture settings (``capsys.disabled()``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "build" / "site"
WARNINGS = ROOT / "build" / "site-warnings.log"
SCREENSHOTS = ROOT / "build" / "site-screenshots"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = Path(os.environ.get("QLEARN_CHROMIUM", "/usr/bin/chromium"))  # Debian's paths
CHROMEDRIVER = Path(os.environ.get("QLEARN_CHROMEDRIVER", "/usr/bin/chromedriver"))
BUILD_COMMAND = [
    sys.executable, "-m", "sphinx", "-b", "html", "-E", "-q", "-w", str(WARNINGS), "docs",
    str(SITE),
]  # fmt: skip


def _title(notebook_path: Path) -> str:
    """The chapter's title: the first heading of its first markdown cell."""
    notebook = nbformat.read(notebook_path, as_version=4)
    first = next(c for c in notebook.cells if c.cell_type == "markdown")
    return re.search(r"^# (.+)$", first.source, re.MULTILINE).group(1).strip()


def _sources() -> list[Path]:
    return [
        *NOTEBOOKS,
        *(p for p in (ROOT / "docs").rglob("*") if p.is_file() and "notebooks" not in p.parts),
        *(ROOT / "qlearn").glob("*.py"),
    ]


@pytest.fixture(scope="module")
def site() -> Path:
    """build/site, rebuilt unless newer than every source (as ``make site`` leaves it)."""
    index = SITE / "index.html"
    fresh = (
        index.exists()
        and WARNINGS.exists()
        and index.stat().st_mtime > max(p.stat().st_mtime for p in _sources())
    )
    if not fresh:
        WARNINGS.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        started = time.perf_counter()
        result = subprocess.run(
            BUILD_COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"the site build failed:\n{result.stdout}\n{result.stderr}"
        print(f"site built in {time.perf_counter() - started:.0f} s")
    return SITE


class _Page(HTMLParser):
    """Collects a page's headings, image sources and links (static checks, no browser)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.h1: list[str] = []
        self._in: str | None = None
        self._href = ""
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag in ("a", "h1") and self._in is None:
            self._in, self._href, self._text = tag, attrs.get("href", ""), []

    def handle_data(self, data):
        if self._in:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == self._in:
            text = " ".join("".join(self._text).split()).rstrip("#").strip()
            (self.h1.append(text) if tag == "h1" else self.links.append((self._href, text)))
            self._in = None


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


# --------------------------------------------------------------------------------------------
# The build itself
# --------------------------------------------------------------------------------------------


def test_build_did_not_touch_the_network_nor_warn_about_notebooks(site):
    log = WARNINGS.read_text(encoding="utf-8")
    assert "network access attempted" not in log, log
    assert not re.search(r"https?://", log), log
    notebook_warnings = [line for line in log.splitlines() if "notebooks/" in line]
    assert not notebook_warnings, "\n".join(notebook_warnings)


def test_index_lists_every_chapter_in_order_then_the_api_reference(site):
    links = _parse(site / "index.html").links
    chapters = [text for href, text in links if href.startswith("notebooks/")]
    titles = [_title(p) for p in NOTEBOOKS]
    assert chapters[: len(titles)] == titles  # the main table of contents, chapter order
    assert any(href == "api.html" for href, _ in links)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_chapter_page_shows_its_title_and_its_stored_figures(site, path):
    page = _parse(site / "notebooks" / f"{path.stem}.html")
    assert page.h1 and page.h1[0] == _title(path)
    notebook = nbformat.read(path, as_version=4)
    stored = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    shown = [src for src in page.images if src.startswith("../_images/")]
    assert len(shown) == stored
    for src in shown:
        image = site / "notebooks" / src
        assert image.exists() and image.read_bytes().startswith(b"\x89PNG")


def test_api_reference_documents_every_public_module(site):
    html = (site / "api.html").read_text(encoding="utf-8")
    package = ROOT / "qlearn"
    modules = [p.stem for p in sorted(package.glob("[!_]*.py"))]
    modules += [p.parent.name for p in sorted(package.glob("[!_]*/__init__.py"))]
    assert {"gguf", "exercises"} <= set(modules)
    for module in modules:
        assert f'id="module-qlearn.{module}"' in html, f"qlearn.{module} missing"
    for module in ("floats", "exercises", "widgets"):
        public = importlib.import_module(f"qlearn.{module}").__all__
        functions = [
            name
            for name in public
            if inspect.isfunction(getattr(importlib.import_module(f"qlearn.{module}"), name))
        ]
        assert functions, f"qlearn.{module} exports no function"
        for name in functions:
            assert f'id="qlearn.{module}.{name}"' in html, f"qlearn.{module}.{name} missing"


def test_the_build_refuses_network_access():
    """The guard in docs/conf.py, run on its own: a download fails and is remembered."""
    script = (
        "import runpy, urllib.request\n"
        "conf = runpy.run_path('docs/conf.py')\n"
        "conf['_forbid_network']()\n"
        "try:\n"
        "    urllib.request.urlopen('https://pypi.org', timeout=5)\n"
        "except OSError as error:\n"
        "    print('refused:', error)\n"
        "print(conf['NETWORK_ATTEMPTS'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "the qlearn site builds offline" in result.stdout
    assert "[\"create_connection ('pypi.org', 443)\"]" in result.stdout


# --------------------------------------------------------------------------------------------
# In a browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = (
            f"Chromium not found ({CHROMIUM}, {CHROMEDRIVER}): run `make browser` "
            "(Debian's chromium and chromium-driver)"
        )
        if os.environ.get("QLEARN_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium: never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _open(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1280, 900)
    driver.get(page.as_uri())
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete)"
        )
    )


def _screenshot(driver, name: str, capsys, height: int | None = None) -> Path:
    """Save the page's top ``height`` pixels (default: the window) as a PNG; print its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if height is not None:  # a viewport of exactly that height (the window has borders)
        width = driver.execute_script("return window.innerWidth")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
    assert driver.save_screenshot(str(path)), "no screenshot"
    if height is not None:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    with capsys.disabled():
        print(f"\n[site screenshot] {path}")
    return path


def test_index_renders_with_the_chapters_in_the_sidebar(site, browser, capsys):
    from selenium.webdriver.common.by import By

    _open(browser, site / "index.html")
    heading = browser.find_element(By.CSS_SELECTOR, "article h1")
    assert heading.is_displayed() and heading.text.startswith("qlearn")
    sidebar = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.bd-links a")]
    titles = [_title(p) for p in NOTEBOOKS]
    assert [t for t in sidebar if t in titles] == titles
    path = _screenshot(browser, "index", capsys)
    assert path.stat().st_size > 10_000


def test_a_chapter_renders_its_title_and_a_loaded_figure(site, browser, capsys):
    from selenium.webdriver.common.by import By

    chapter = NOTEBOOKS[0]
    _open(browser, site / "notebooks" / f"{chapter.stem}.html")
    heading = browser.find_element(By.CSS_SELECTOR, "article h1")
    assert heading.is_displayed()
    assert heading.text.rstrip("#").strip() == _title(chapter)
    figures = browser.find_elements(By.CSS_SELECTOR, "article .cell_output img")
    loaded = [f for f in figures if browser.execute_script("return arguments[0].naturalWidth", f)]
    assert loaded, "no figure of the chapter loaded"
    first = loaded[0]
    assert browser.execute_script("return arguments[0].naturalHeight", first) > 0
    # One picture from the title down to the bottom of the first figure.
    bottom = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return r.bottom + window.scrollY", first
    )
    path = _screenshot(browser, chapter.stem, capsys, height=int(bottom) + 40)
    assert path.stat().st_size > 20_000


def test_solutions_and_answers_are_collapsed_until_their_toggle_is_clicked(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chapter = NOTEBOOKS[0]
    notebook = nbformat.read(chapter, as_version=4)
    collapsed = [
        c for c in notebook.cells if {"solution", "answer"} & set(c.metadata.get("tags", []))
    ]
    _open(browser, site / "notebooks" / f"{chapter.stem}.html")
    toggles = browser.find_elements(By.CSS_SELECTOR, "article details.hide")
    assert len(toggles) == len(collapsed)
    first_line = collapsed[0].source.splitlines()[0]  # "def memory_gb(...":
    solution = toggles[0].find_element(By.CSS_SELECTOR, ".cell_input")
    assert not solution.is_displayed(), "a solution is shown under its question"
    summary = toggles[0].find_element(By.TAG_NAME, "summary")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
    summary.click()
    details_open = browser.execute_script("return arguments[0].open", toggles[0])
    assert details_open, "clicking the toggle did not open it"
    # myst-nb fades the opened content in (0.3 s from opacity 0), and selenium counts an
    # element at opacity 0 as not displayed: wait out the fade before looking.
    WebDriverWait(browser, 5).until(
        lambda _: solution.is_displayed(), "the opened solution never became visible"
    )
    assert first_line.split("(")[0] in solution.text
