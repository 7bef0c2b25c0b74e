"""edgefs serve in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The user's journey on a headless device: open the link with the token, see live frames,
enroll a class from the (synthetic) camera by button, see it recognised, rename it, export
its pack, remove it, import the pack again; and a wrong token gets 401 and changes nothing.
A screenshot of each page is saved (``EDGEFS_SERVE_SCREENSHOTS=DIR``; the README's come from
``reports/serve/``).

Skipped, with the reason, where no Chromium is found (``apt-get install chromium``) or
Playwright is not installed; CI installs both (``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason='the web stack is not installed: pip install "edgefs[serve]"')
pytest.importorskip("playwright", reason="Playwright for Python is not installed (pip install playwright)")

from serve_support import TOKEN, Served, class_names, enroll_from_camera, running_server, synthetic, wait_for

from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("EDGEFS_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (apt-get install chromium; or set EDGEFS_CHROMIUM): browser tests skipped")
    from playwright.sync_api import sync_playwright

    # Playwright gives each launch a fresh temporary profile (user-data dir); the flags keep Chromium
    # from reaching out (the network is closed in CI) and let it run as root.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(trained_bundle: Path, glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Source 0 shows one class that is not enrolled; source 1 shows two enrolled ones."""
    names = class_names(glyph_data, 3)
    store = tmp_path_factory.mktemp("serve-browser") / "classes.db"
    with Classifier.open(trained_bundle, store, options=EngineOptions(backend="onnxruntime", threads=1),
                         log=lambda _: None) as clf:
        enroll_from_camera(clf, glyph_data, names[1:])
    sources = [synthetic(glyph_data, fps=10, hold=1000, classes=names[0]),
               synthetic(glyph_data, fps=10, hold=20, classes=",".join(names[1:]), seed=5)]
    with running_server(trained_bundle, store, sources) as s:
        s.shown_class = names[0]  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("EDGEFS_SERVE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        return Path(target)
    return tmp_path_factory.mktemp("screenshots")


def test_journey_live_enroll_recognise_rename_export_remove_import(browser: Any, served: Served, shots_dir: Path,
                                                                     tmp_path: Path) -> None:
    ctx = browser.new_context(viewport={"width": 1100, "height": 760}, accept_downloads=True)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    # The link printed at start: the token goes into a cookie and out of the address bar.
    page.goto(f"{served.url}/?token={TOKEN}")
    assert page.url == f"{served.url}/"
    page.wait_for_selector("article.card[data-source='1'] .label")
    view = page.locator("article.card[data-source='0'] img.view")
    wait_for(lambda: view.evaluate("img => img.complete && img.naturalWidth > 0"), timeout=20)
    first = page.locator("article.card[data-source='0']").get_attribute("data-frame")
    a = view.screenshot()
    wait_for(lambda: int(page.locator("article.card[data-source='0']").get_attribute("data-frame") or -1)
             > int(first or -1) + 5, timeout=20)
    assert view.screenshot() != a  # the picture itself changes, not only the counters
    wait_for(lambda: page.locator("#stages tbody tr").count() >= 4, timeout=20)
    # A second chart point; for the committed screenshots, a few more.
    page.wait_for_timeout(8000 if os.environ.get("EDGEFS_SERVE_SCREENSHOTS") else 1500)
    page.screenshot(path=str(shots_dir / "live.png"), full_page=True)

    # Enroll the class source 0 shows, by button.
    page.click("nav a[data-nav=enroll]")
    page.fill("#label", "mug")
    page.select_option("#source", "0")
    page.fill("#shots", "3")
    page.fill("#delay", "1")
    page.click("#start")
    page.wait_for_selector("#phase[data-phase=countdown], #phase[data-phase=collecting]", timeout=10_000)
    page.wait_for_selector("#phase[data-phase=done], #phase[data-phase=failed]", timeout=60_000)
    assert page.get_attribute("#phase", "data-phase") == "done", page.inner_text("#message")
    assert page.locator("figure.shot.ok").count() >= 1
    assert page.locator("figure.shot").count() == page.locator("figure.shot.ok").count() + \
        page.locator("figure.shot.bad").count()  # every shot judged, with its reason
    assert "mug" in served.clf.classes and served.clf.store.classes()[-1].name == "mug"
    wait_for(lambda: page.inner_text("#now-label") == "mug", timeout=20)  # recognised, live
    page.screenshot(path=str(shots_dir / "enroll.png"))

    # Classes: thumbnails from the store; rename.
    page.click("nav a[data-nav=classes]")
    card = page.locator("article.class[data-name='mug']")
    card.wait_for()
    shots = served.clf.head.shots("mug")
    assert card.locator(".thumb img").count() == shots
    wait_for(lambda: card.locator(".thumb img").first.evaluate("img => img.naturalWidth > 0"), timeout=10)
    page.screenshot(path=str(shots_dir / "classes.png"))
    card.locator("input.new-name").fill("cup")
    card.locator("button.rename").click()
    page.locator("article.class[data-name='cup']").wait_for()
    assert "cup" in served.clf.classes and "mug" not in served.clf.classes
    assert "cup" in served.clf.store.names()

    # Export its pack (a download), remove it, import the pack again.
    card = page.locator("article.class[data-name='cup']")
    with page.expect_download() as got:
        card.locator("a.export").click()
    pack = tmp_path / got.value.suggested_filename
    got.value.save_as(pack)
    assert pack.name == "cup.efpack" and "pack.json" in zipfile.ZipFile(pack).namelist()
    page.once("dialog", lambda d: d.accept())
    card.locator("button.remove").click()
    page.locator("article.class[data-name='cup']").wait_for(state="detached")
    assert "cup" not in served.clf.classes and "cup" not in served.clf.store.names()
    page.set_input_files("#pack", str(pack))
    page.click("#import-form button[type=submit]")
    page.locator("article.class[data-name='cup']").wait_for()
    assert "1 added" in page.inner_text("#import-result")
    assert served.clf.head.shots("cup") == shots  # live in the head again, same shots
    wait_for(lambda: served.web.hub.latest[0] is not None and served.web.hub.latest[0][1]["label"] == "cup", timeout=20)

    page.click("nav a[data-nav=settings]")
    page.wait_for_selector("#live-results .label")
    page.check("input[name=mode][value=manual]")
    wait_for(lambda: page.inner_text("#saved"), timeout=10)
    assert served.clf.threshold_mode != "auto"
    page.check("input[name=mode][value=auto]")
    wait_for(lambda: served.clf.threshold_mode == "auto", timeout=10)
    wait_for(lambda: "calibrated" in page.inner_text("#in-force"), timeout=10)  # the page shows the reply
    assert page.input_value("#shot-views") == str(served.clf.shot_views)
    page.select_option("#shot-views", "7")
    page.click("#save-views")
    wait_for(lambda: served.clf.shot_views == 7, timeout=10)
    assert served.clf.store.settings()["shot_views"] == 7
    page.screenshot(path=str(shots_dir / "settings.png"))
    assert problems == []
    ctx.close()


def test_wrong_token_gets_401_and_changes_nothing(browser: Any, served: Served) -> None:
    ctx = browser.new_context()
    host = served.url.removeprefix("http://").split(":")[0]
    ctx.add_cookies([{"name": "edgefs_token", "value": "wrong-token-000000000000", "domain": host, "path": "/"}])
    page = ctx.new_page()
    before = [(c.name, c.shots) for c in served.clf.store.classes()]
    page.goto(f"{served.url}/classes")
    page.locator("#login").wait_for(state="visible")  # the page asks for the token
    assert page.locator("article.class").count() == 0
    name = before[0][0]
    status = page.evaluate("""async (name) => (await fetch('/api/v1/classes/remove', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({name})})).status""", name)
    assert status == 401
    stream = page.evaluate("async () => (await fetch('/api/v1/frame/0')).status")
    assert stream == 401
    assert page.goto(f"{served.url}/?token=wrong-token-000000000000").status == 401
    assert [(c.name, c.shots) for c in served.clf.store.classes()] == before
    # Signing in with the right token on the form opens the page.
    page.goto(f"{served.url}/classes")
    page.fill("#login-token", TOKEN)
    page.click("#login button[type=submit]")
    page.locator("article.class").first.wait_for()
    ctx.close()
