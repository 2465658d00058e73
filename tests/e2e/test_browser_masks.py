"""Browser end to end for masks: the real Label Studio 1.23.2 editor, headless Chromium, the shipped video_masks.xml.

A task made by `scribblebox import-video` (video + frame images) already holds the object's box track. The user turns
Auto-Annotation on, picks the object's label under the click tool, chooses the smart key point tool (Auto-Detect) and
clicks the object on one frame image, then Alt+clicks a spot that is not the object. The test reads what the editor
sent (the browser's /interactive-annotating request, and the /predict body the backend got, through a recording
proxy), checks the masks that came back on every page, accepts them and keeps a screenshot
(SCRIBBLEBOX_MASKS_SCREENSHOT=docs/label-studio-masks.png refreshes the README's picture).

Facts of Label Studio 1.23.2 this relies on (read from its frontend bundle):
- the smart tools show only with Auto-Annotation on, grouped under one "Auto-Detect" button (hover shows them);
- a key point is made only while its label is selected, and the editor unselects it after each click;
- Alt+click with the smart key point tool gives ``is_positive: false``;
- pending suggestions on an image list are drawn on every page (not filtered by ``item_index``) until accepted;
  accepting them keeps each mask on its own page and deletes the smart key points.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import ClassVar
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests

from scribblebox.backend.label_studio.brush import decode_mask

from .conftest import Backend, LabelStudio
from .test_browser import PREDICT_TIMEOUT_MS, browser, logged_in_page  # noqa: F401 (fixture)
from .test_label_studio_masks import FPS, Clip, Names, mask_project

pytestmark = pytest.mark.e2e

NUM_FRAMES = 24
PAGE = 5  # the frame image the user clicks (0-based page = video frame)
NEGATIVE_AT = (0.15, 0.15)  # the Alt+click, as a fraction of the object's box: a spot the user says is not the object
SCREENSHOT = Path(os.environ.get("SCRIBBLEBOX_MASKS_SCREENSHOT") or tempfile.gettempdir() + "/scribblebox-label-studio-masks.png")
SCREENSHOT_MAX_BYTES = 300_000
VIEWPORT = {"width": 1200, "height": 1400}  # tall: the video, its timeline and the frame image all fit

EDITOR = "window.Htx.annotationStore.selected"
REGIONS_JS = f"() => {EDITOR}.serializeAnnotation()"
TOOL_JS = f"n => {EDITOR}.names.get(n).getToolsManager().findSelectedTool()?.fullName"
PAGE_JS = f"n => {EDITOR}.names.get(n).currentImage"
# The frame image on screen (CSS pixels) once its page has loaded.
IMAGE_RECT_JS = f"""n => {{
  const tag = {EDITOR}.names.get(n);
  if (!tag.currentImageEntity?.imageLoaded) return null;
  const img = [...document.querySelectorAll('img')].find(i => i.naturalWidth && i.getBoundingClientRect().width > 100);
  if (!img) return null;
  const r = img.getBoundingClientRect();
  return {{x: r.x, y: r.y, width: r.width, height: r.height}};
}}"""
# What the current page shows: the accepted regions of the image tag are filtered by item_index (`regs`).
PAGE_REGIONS_JS = f"n => {EDITOR}.names.get(n).regs.map(r => [r.type, r.item_index])"
SUGGESTIONS_JS = f"() => [...{EDITOR}.suggestions.values()].map(r => [r.type, r.item_index])"


class _Recorder(BaseHTTPRequestHandler):
    """Forwards every call to the backend and keeps the bodies of POST /predict: what the backend really got."""

    target: ClassVar[str] = ""
    predicts: ClassVar[list[dict]] = []

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "POST" and self.path.rstrip("/") == "/predict":
            self.predicts.append(json.loads(body))
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
        answer = requests.request(self.command, self.target + self.path, data=body, headers=headers, timeout=120)
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = _forward

    def log_message(self, *args: object) -> None:  # quiet: pytest shows the servers' own logs on failure
        pass


@pytest.fixture(scope="module")
def recorder(backend: Backend) -> Iterator[tuple[str, list[dict]]]:
    """(url, recorded /predict bodies) of a proxy in front of the backend."""
    handler = type("Recorder", (_Recorder,), {"target": backend.url, "predicts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.predicts
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class MaskTask:
    names: Names
    clip: Clip
    project_id: int
    task_id: int
    track_id: str
    predicts: list[dict]


@pytest.fixture(scope="module")
def mask_task(label_studio: LabelStudio, recorder: tuple[str, list[dict]],
              tmp_path_factory: pytest.TempPathFactory) -> MaskTask:
    """A mask project, one imported video task whose saved annotation holds the object's box track (tracked by the
    backend, as after step 1 of the config), and the backend connected with interactive pre-annotation on."""
    names, clip, project_id, task_id, ml = mask_project(label_studio, recorder[0], "ScribbleBox browser masks",
                                                        tmp_path_factory.mktemp("browser-masks"), NUM_FRAMES)
    ls = label_studio.client()
    assert ml.get("state") == "CO" and ml.get("is_interactive"), f"backend not connected as interactive: {ml}"
    x, y, w, h = clip.gt[0] * 100 / [clip.width, clip.height, clip.width, clip.height]  # percent of the frame
    box = {"id": "object-track", "from_name": names.box, "to_name": names.video, "type": "videorectangle", "origin": "manual",
           "value": {"framesCount": NUM_FRAMES, "duration": NUM_FRAMES / FPS, "labels": [names.label],
                     "sequence": [{"frame": 1, "x": x, "y": y, "width": w, "height": h, "rotation": 0, "enabled": True,
                                   "time": 0.0}]}}
    (track,) = [r for r in ls.interactive(ml["id"], task_id, [box])["result"] if r.get("type") == "videorectangle"]
    ls.create_annotation(task_id, [track])
    return MaskTask(names, clip, project_id, task_id, track["id"], recorder[1])


def _label_group(names: Names) -> int:
    """Position of the KeyPointLabels block among the config's label blocks (all carry the same label names)."""
    blocks = [el.tag for el in ET.fromstring(names.xml).iter() if el.find("Label") is not None]
    return blocks.index("KeyPointLabels")


def _pick_click_tool(page, names: Names) -> None:
    """Select the object's label under the click tool, and the smart key point tool if it is not already on."""
    selected = f"n => {EDITOR}.names.get(n).isSelected"
    if not page.evaluate(selected, names.clicks):  # a click on a selected label would unselect it
        page.locator(".lsf-labels").nth(_label_group(names)).get_by_text(names.label, exact=True).click()
    if page.evaluate(TOOL_JS, names.frames) != "KeyPointTool-dynamic":
        page.locator("button.lsf-tool_smart:not([aria-label])").hover()  # "Auto-Detect": shows the smart tools
        page.locator("button.lsf-tool_smart[aria-label=key-point-tool]").click()
    assert page.evaluate(TOOL_JS, names.frames) == "KeyPointTool-dynamic", "the smart key point tool is not selected"
    assert page.evaluate(selected, names.clicks), "the click label is not selected"


def _on_screen(page, task: MaskTask, px: float, py: float) -> tuple[float, float]:
    """Image pixel -> page point, measured now and once the layout has settled (the editor scrolls as its bars change)."""
    page.locator("img[src^=blob]").scroll_into_view_if_needed()
    rect = None
    for _ in range(50):
        now = page.wait_for_function(IMAGE_RECT_JS, arg=task.names.frames).json_value()
        if now == rect:
            break
        rect = now
        page.wait_for_timeout(100)
    return rect["x"] + px / task.clip.width * rect["width"], rect["y"] + py / task.clip.height * rect["height"]


def _click(page, task: MaskTask, pixel: tuple[float, float], *, alt: bool = False) -> tuple[dict, dict]:
    """Click the frame image at `pixel` (image pixels); returns (the browser's request body, LS's answer)."""
    point = _on_screen(page, task, *pixel)
    call = "/interactive-annotating"
    with (page.expect_response(lambda r: call in r.url, timeout=PREDICT_TIMEOUT_MS) as answer,
          page.expect_request(lambda r: call in r.url) as sent):
        if alt:
            page.keyboard.down("Alt")
        page.mouse.click(*point)
        if alt:
            page.keyboard.up("Alt")
    return json.loads(sent.value.post_data), answer.value.json()


def _masks(answer: dict, task: MaskTask) -> dict[int, np.ndarray]:
    assert "data" in answer and not answer.get("errors"), f"interactive-annotating failed: {answer}"
    out = {}
    for r in answer["data"]["result"]:
        if r.get("type") == "brushlabels":
            assert (r["from_name"], r["to_name"], r["value"]["brushlabels"]) == (task.names.brush, task.names.frames,
                                                                               [task.names.label]), r
            out[r["item_index"]] = decode_mask(r["value"]["rle"], r["original_width"], r["original_height"])
    return out


def _check_click(region: dict, task: MaskTask, xy: tuple[float, float], positive: bool) -> None:
    """The smart key point as the editor serialises it: percent coordinates on page PAGE of the image list."""
    assert region["type"] == "keypointlabels" and region["from_name"] == task.names.clicks, region
    assert region["to_name"] == task.names.frames and region["item_index"] == PAGE, region
    assert region["is_positive"] is positive, region
    assert (region["original_width"], region["original_height"]) == (task.clip.width, task.clip.height), region
    assert region["value"]["keypointlabels"] == [task.names.label], region
    x, y = region["value"]["x"], region["value"]["y"]
    assert abs(x - 100 * xy[0] / task.clip.width) < 1 and abs(y - 100 * xy[1] / task.clip.height) < 1, region


def test_click_in_the_editor_gives_masks_on_every_frame(browser, label_studio: LabelStudio, mask_task: MaskTask) -> None:  # noqa: F811
    task, names = mask_task, mask_task.names
    page = logged_in_page(browser, label_studio, VIEWPORT)

    page.goto(f"{label_studio.url}/projects/{task.project_id}/data?task={task.task_id}")
    page.wait_for_function("id => window.Htx?.annotationStore?.selected?.serializeAnnotation().some(r => r.id === id)",
                           arg=task.track_id)  # the saved annotation with the box track is the one open
    page.get_by_test_id("bottombar-auto-annotation-toggle").check()
    _pick_click_tool(page, names)
    for _ in range(PAGE):
        page.locator(".lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)").click()
    page.wait_for_function(f"n => ({PAGE_JS})(n) === {PAGE}", arg=names.frames)
    x, y, w, h = task.clip.gt[PAGE]
    inside, outside = (x + w / 2, y + h / 2), (x + NEGATIVE_AT[0] * w, y + NEGATIVE_AT[1] * h)

    # 1. A click on the object: one smart key point goes out, a mask comes back for every page.
    body, answer = _click(page, task, inside)
    assert body["task"] == task.task_id and len(body["context"]["result"]) == 1, body
    _check_click(body["context"]["result"][0], task, inside, positive=True)
    masks = _masks(answer, task)
    assert sorted(masks) == list(range(NUM_FRAMES)), f"masks for pages {sorted(masks)}"
    assert all(m.any() for m in masks.values()), "an empty mask came back"
    truth = task.clip.gt_mask(PAGE)
    iou = (masks[PAGE] & truth).sum() / (masks[PAGE] | truth).sum()
    assert iou > 0.7 and masks[PAGE][int(inside[1]), int(inside[0])], f"clicked frame: IoU {iou:.3f} with the object"
    page.wait_for_function(f"k => ({SUGGESTIONS_JS})().filter(r => r[0] === 'brushregion').length === k", arg=NUM_FRAMES)

    # What reached the backend: LS's /predict with the UI's regions verbatim in params.context.result.
    sent = [p for p in task.predicts if any(r.get("type") == "keypointlabels" for r in (p["params"].get("context") or {})
                                            .get("result", []))]
    assert sent and sent[-1]["params"]["context"]["result"] == body["context"]["result"], sent[-1:]
    assert [t["id"] for t in sent[-1]["tasks"]] == [task.task_id]

    # 2. Alt+click (the label must be picked again: the editor drops it after each key point): "not the object".
    _pick_click_tool(page, names)
    body, answer = _click(page, task, outside, alt=True)
    first, second = body["context"]["result"]  # the pending smart key points of that label travel together
    _check_click(first, task, inside, positive=True)
    _check_click(second, task, outside, positive=False)
    masks = _masks(answer, task)
    assert sorted(masks) == list(range(NUM_FRAMES)), f"masks for pages {sorted(masks)}"
    assert masks[PAGE][int(inside[1]), int(inside[0])], "the positive click fell out of the mask"
    assert not masks[PAGE][int(outside[1]), int(outside[0])], "the negative click is still inside the mask"

    # 3. Accept the suggestions: a brush region on every page, each page showing its own mask only.
    page.wait_for_function(f"k => ({SUGGESTIONS_JS})().filter(r => r[0] === 'brushregion').length === k", arg=NUM_FRAMES)
    page.get_by_test_id("bottombar-accept-suggestions-button").click()
    brushes = f"() => ({REGIONS_JS})().filter(r => r.type === 'brushlabels').map(r => r.item_index)"
    page.wait_for_function(f"k => ({brushes})().length === k", arg=NUM_FRAMES)
    assert sorted(page.evaluate(brushes)) == list(range(NUM_FRAMES))
    assert page.evaluate(PAGE_REGIONS_JS, names.frames) == [["brushregion", PAGE]], "page shows other pages' masks"
    assert page.evaluate(f"() => ({REGIONS_JS})().some(r => r.id === {task.track_id!r})"), "the box track was lost"

    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.wait_for_timeout(300)
    _save_screenshot(page)
    page.close()


def _save_screenshot(page) -> None:
    """The frame image with its mask, its header, pager, tools and labels; scaled down to stay under the size cap."""
    import cv2

    box = page.evaluate("""() => {
      const top = document.querySelector('img[src^=blob]').getBoundingClientRect().top;
      const parts = [...document.querySelectorAll('.lsf-pagination, img[src^=blob], .lsf-labels, .lsf-toolbar')]
        .map(e => e.getBoundingClientRect()).filter(r => r.width && r.height && r.bottom > top - 40);
      const x0 = Math.min(...parts.map(r => r.left)), y0 = Math.min(...parts.map(r => r.top));
      return {x: x0 - 8, y: y0 - 64, width: Math.max(...parts.map(r => r.right)) - x0 + 16,
              height: Math.max(...parts.map(r => r.bottom)) - y0 + 72};
    }""")
    image = cv2.imdecode(np.frombuffer(page.screenshot(clip=box), np.uint8), cv2.IMREAD_COLOR)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    scale = 1.0
    while True:
        small = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if ok and (len(png) <= SCREENSHOT_MAX_BYTES or scale < 0.3):
            break
        scale *= 0.85
    SCREENSHOT.write_bytes(png.tobytes())
