"""Browser end to end: the real Label Studio 1.23.2 UI, in headless Chromium, with the ScribbleBox backend connected.

A user selects a label, draws one box on the video and applies the label; the UI calls the backend interactively
and the region comes back as a track of several keyframes. The test reads those keyframes from the editor's own
store (what the user sees on the timeline) and keeps a screenshot for the README (docs/label-studio-ui.png).

Needs Debian's Chromium and the playwright client (scripts/install-browser.sh); Playwright's browser download is
never used. Without them the test skips, except under CI=true where a missing browser must fail the run.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import test_label_studio_tracks as tracks
from .conftest import Backend, LabelStudio
from .test_label_studio_tracks import Clip, Schema, assert_follows_gt, import_task

pytestmark = pytest.mark.e2e
schema = tracks.schema  # the shipped config and the synthetic moving-box clip, as the API-level tests use them
clip = tracks.clip

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# The README's picture is refreshed only on request (SCRIBBLEBOX_SCREENSHOT=docs/label-studio-ui.png); CI keeps its tree clean.
SCREENSHOT = Path(os.environ.get("SCRIBBLEBOX_SCREENSHOT") or tempfile.gettempdir() + "/scribblebox-label-studio-ui.png")
VIEWPORT = {"width": 1400, "height": 900}
UI_TIMEOUT_MS = 60_000  # the editor bundle is large; the first load on 2 cores takes a while
PREDICT_TIMEOUT_MS = 100_000  # Label Studio's own limit for the backend's answer


def _require_browser() -> None:
    """Skip (fail under CI=true) with the command that fixes it when Chromium or playwright is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian's chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if not missing:
        return
    message = f"browser test needs {' and '.join(missing)}: run scripts/install-browser.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


# The video frame canvas (the one outside Konva's stage): the bounding box of its drawn pixels is where the video
# shows on screen, whatever the zoom and letterboxing; CSS pixels.
VIDEO_RECT_JS = """() => {
  for (const c of document.querySelectorAll('canvas')) {
    if (c.parentElement.classList.contains('konvajs-content') || !c.width || !c.height) continue;
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let x0 = c.width, y0 = c.height, x1 = -1, y1 = -1;
    for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
      if (data[(y * c.width + x) * 4 + 3] > 0) {
        if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
      }
    }
    if (x1 < 0) continue;
    const r = c.getBoundingClientRect(), sx = r.width / c.width, sy = r.height / c.height;
    return {x: r.left + x0 * sx, y: r.top + y0 * sy, width: (x1 - x0 + 1) * sx, height: (y1 - y0 + 1) * sy};
  }
  return null;
}"""
# The editor's current annotation as Label Studio would save it (window.Htx is the editor's root store).
REGIONS_JS = "() => window.Htx.annotationStore.selected.serializeAnnotation()"
SELECTED_JS = "() => window.Htx.annotationStore.selected.selectedRegions.map(r => r.id)"


def _credentials(label_studio: LabelStudio) -> tuple[str, str]:
    """The fixture's login when it exposes one; otherwise set a known password with Label Studio's own CLI."""
    username, password = getattr(label_studio, "username", None), getattr(label_studio, "password", None)
    if username and password:
        return username, password
    username, password = "e2e@example.com", "browser-test-password"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(label_studio.media_root.parent / "data")}
    env.pop("VIRTUAL_ENV", None)
    exe = Path(os.environ.get("SCRIBBLEBOX_LS_VENV") or REPO / ".cache" / "label-studio-venv") / "bin" / "label-studio"
    done = subprocess.run([str(exe), "reset_password", "--username", username, "--password", password],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"label-studio reset_password failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return username, password


def logged_in_page(browser: object, label_studio: LabelStudio, viewport: dict[str, int] = VIEWPORT):
    """A new browser page of `viewport` size logged in to Label Studio as the fixture's user, UI timeout set."""
    username, password = _credentials(label_studio)
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{label_studio.url}/user/login")
    page.fill("input[name=email]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)
    return page


@pytest.fixture(scope="module")
def task(label_studio: LabelStudio, backend: Backend, schema: Schema, clip: Clip) -> tuple[int, int]:
    """A project with the shipped video config, one video task and the backend registered as interactive."""
    ls = label_studio.client()
    project_id = ls.create_project("ScribbleBox browser", schema.xml)["id"]
    task_id = import_task(ls, project_id, clip, schema)
    ml = ls.register_ml_backend(project_id, backend.url)
    assert ml.get("state") == "CO" and ml.get("is_interactive"), f"backend not connected as interactive: {ml}"
    return project_id, task_id


def test_box_drawn_in_the_ui_comes_back_as_keyframes(
    browser: object, label_studio: LabelStudio, task: tuple[int, int], clip: Clip, schema: Schema
) -> None:
    project_id, task_id = task
    page = logged_in_page(browser, label_studio)
    calls: list[int] = []
    page.on("response", lambda r: calls.append(r.status) if "/interactive-annotating" in r.url else None)

    page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task_id}")
    page.wait_for_function("() => window.Htx?.annotationStore?.selected")
    # Interactive pre-annotation: the backend is registered with is_interactive, and the user turns it on here.
    page.get_by_test_id("bottombar-auto-annotation-toggle").check()
    assert page.evaluate("() => window.Htx.autoAnnotation"), "the Auto-Annotation toggle did not turn on"
    page.wait_for_function(VIDEO_RECT_JS)  # the first frame is painted
    video = page.evaluate(VIDEO_RECT_JS)
    assert abs(video["width"] / video["height"] - clip.width / clip.height) < 0.02, f"video on screen at {video}"

    # Draw the object's box on frame 1 (no label yet), select it, then apply a label: that is the trigger.
    sx, sy = video["width"] / clip.width, video["height"] / clip.height
    x, y, w, h = (float(v) for v in clip.gt[0])
    x0, y0, x1, y1 = video["x"] + x * sx, video["y"] + y * sy, video["x"] + (x + w) * sx, video["y"] + (y + h) * sy
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):  # the drawing layer can miss a drag made right after the first paint: draw again, as a user would
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()
        try:
            page.wait_for_function(f"() => ({REGIONS_JS})().some(r => r.type === 'videorectangle')", timeout=5000)
            break
        except PlaywrightTimeout:
            continue
    drawn = [r for r in page.evaluate(REGIONS_JS) if r["type"] == "videorectangle"]
    assert len(drawn) == 1 and len(drawn[0]["value"]["sequence"]) == 1, f"drawing made no single box: {drawn}"
    rid = drawn[0]["id"]
    page.mouse.click((x0 + x1) / 2, (y0 + y1) / 2)
    page.wait_for_function(f"() => ({SELECTED_JS})().includes({rid!r})")
    page.get_by_text(schema.label, exact=True).click()

    tracked = f"() => ({REGIONS_JS})().some(r => r.id === {rid!r} && r.value.sequence.length >= 2)"
    page.wait_for_function(tracked, timeout=PREDICT_TIMEOUT_MS)
    assert calls and all(status == 200 for status in calls), f"interactive-annotating answers: {calls}"
    (region,) = [r for r in page.evaluate(REGIONS_JS) if r["id"] == rid]
    assert region["value"].get("labels") == [schema.label], f"label lost: {region['value']}"
    sequence = region["value"]["sequence"]
    assert_follows_gt(sequence, clip, "track shown in the editor")

    # A frame in the middle: the screenshot shows the interpolated box on the moving object and the timeline.
    middle = clip.n // 2 + 1
    page.evaluate(f"() => window.Htx.annotationStore.selected.names.get({schema.video_name!r}).setFrame({middle})")
    page.wait_for_timeout(500)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    page.close()
