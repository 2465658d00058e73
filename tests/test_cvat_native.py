"""Native functions, loaded and driven by cvat-cli 2.80.0's own agent code (FunctionLoader, the drivers' spec
checks and worker jobs: what `function create-native` and `run-agent` execute), without a CVAT server."""
from __future__ import annotations

import itertools

import numpy as np
import PIL.Image
import pytest
import cvat_sdk.auto_annotation as cvataa
from cvat_cli._internal import agent_driver_interaction as interaction
from cvat_cli._internal import agent_driver_tracking as tracking
from cvat_cli._internal.agent import get_function_driver_class
from cvat_cli._internal.agent_driver import set_worker_current_function
from cvat_cli._internal.common import FunctionLoader
from cvat_sdk import models
from cvat_sdk.masks import decode_mask, encode_mask

from scribblebox.backend.cvat import native
from scribblebox.models.geometry import iou, mask_to_box
from scribblebox.models.synthetic import moving_box_scene

MODULE = "scribblebox.backend.cvat.native"
SCENE = moving_box_scene(16, size=(320, 240), start=(40, 60, 64, 48), velocity=(3, 1), seed=5)
W, H = 320, 240


def pil(index: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(SCENE.render(index)[:, :, ::-1])  # the agent hands RGB PIL images


def box_mask(box) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    x, y, w, h = (int(round(v)) for v in box)
    mask[y:y + h, x:x + w] = True
    return mask


def as_box(points) -> np.ndarray:
    return np.array([points[0], points[1], points[2] - points[0], points[3] - points[1]])


def load(kind: str):
    function = FunctionLoader(MODULE, None, {"kind": kind}).load()  # exactly: --function-module ... -p kind=str:...
    set_worker_current_function(function)
    return function


def test_specs_are_what_create_native_registers():
    tracker, interactor = load("tracker"), load("interactor")
    tracker_driver = get_function_driver_class(tracker.spec)
    assert tracker_driver.FUNCTION_KIND == "tracker"
    assert tracker_driver.get_remote_function_fields(tracker.spec) == {"supported_shape_types": ["mask", "rectangle"]}
    interactor_driver = get_function_driver_class(interactor.spec)
    fields = interactor_driver.get_remote_function_fields(interactor.spec)
    assert interactor_driver.FUNCTION_KIND == "interactor"
    assert fields == {"min_pos_points": 1, "min_neg_points": 0, "startswith_box_optional": True}
    # the agent's check that the function object still matches the function CVAT holds
    driver = interactor_driver(None, None, interactor.spec)
    driver.validate_function_compatibility({"min_pos_points": 1, "min_neg_points": 0, "startswith_box": False,
                                            "startswith_box_optional": True})
    tracker_driver(None, None, tracker.spec).validate_function_compatibility(
        {"supported_shape_types": ["rectangle", "mask"]})


def test_tracking_rectangles_and_masks_through_the_agent():
    load("tracker")
    ids = itertools.count()
    tracking.AgentTrackingFunctionDriver.init_worker(lambda: f"state-{next(ids)}")
    start = SCENE.boxes[0]
    corners = [float(start[0]), float(start[1]), float(start[0] + start[2]), float(start[1] + start[3])]
    shapes = [cvataa.TrackableShape(type="rectangle", points=corners),
              cvataa.TrackableShape(type="mask", points=encode_mask(box_mask(start)))]
    states = tracking._worker_job_init_tracking(1, pil(0), shapes)
    for frame in range(1, len(SCENE.boxes)):
        rect, mask = tracking._worker_job_track(1, pil(frame), states)
        truth = SCENE.boxes[frame]
        assert rect.type == "rectangle" and iou(as_box(rect.points), truth) > 0.8, frame
        decoded = decode_mask(mask.points, image_width=W, image_height=H)
        assert mask.type == "mask" and iou(mask_to_box(decoded), truth) > 0.75, frame
        for shape in (rect, mask):  # the SDK's own model accepts what the agent sends back
            models.LabeledShapeRequest(type=shape.type, points=shape.points, frame=frame, label_id=1)


def test_tracker_reports_a_lost_object_as_none():
    class Lost:
        def init(self, frame, box):
            pass

        def update(self, frame):
            return None, 0.0

    function = native.Tracker(Lost, propagator=None)
    context = None
    state = function.init_tracking_state(context, function.preprocess_image(context, pil(0)),
                                         cvataa.TrackableShape(type="rectangle", points=[40, 60, 104, 108]))
    assert function.track(context, function.preprocess_image(context, pil(1)), state) is None


def test_tracker_refuses_what_it_cannot_track():
    function = load("tracker")
    image = function.preprocess_image(None, pil(0))
    with pytest.raises(ValueError, match="rectangles and masks, not 'polygon'"):
        function.init_tracking_state(None, image, cvataa.TrackableShape(type="polygon", points=[1, 1, 9, 1, 9, 9]))
    with pytest.raises(ValueError, match="empty or outside"):
        function.init_tracking_state(None, image, cvataa.TrackableShape(type="rectangle", points=[400, 10, 450, 50]))


def test_interaction_through_the_agent():
    load("interactor")
    interaction.AgentInteractionFunctionDriver.init_worker(None)
    x, y, w, h = SCENE.boxes[0]
    prompts = interaction._InteractionPromptsImpl(pos_points=((x + w / 2, y + h / 2),), neg_points=((x - 6, y - 6),),
                                                  bounding_box=((x, y), (x + w, y + h)))
    (shape,) = interaction._worker_job_interact(("task", 0), pil(0), prompts)
    assert isinstance(shape, cvataa.InteractionResultShape) and shape.type == "mask"
    mask = decode_mask(shape.points, image_width=W, image_height=H)
    truth = box_mask(SCENE.boxes[0])
    assert (mask & truth).sum() / truth.sum() > 0.95 and (mask & ~truth).sum() / truth.sum() < 0.05
    # a second prompt on the same frame reuses the agent's cached preprocessed image
    again = interaction._worker_job_interact_from_cache(("task", 0), prompts)
    assert again is not None and again[0].points == shape.points


def test_interaction_without_a_box_and_bad_prompts():
    function = load("interactor")
    image = function.preprocess_image(None, pil(2))
    x, y, w, h = SCENE.boxes[2]
    prompts = interaction._InteractionPromptsImpl(pos_points=((x + w * 0.3, y + h * 0.3), (x + w * 0.7, y + h * 0.7)),
                                                  neg_points=(), bounding_box=None)
    (shape,) = function.detect(None, image, prompts)
    assert iou(mask_to_box(decode_mask(shape.points, image_width=W, image_height=H)), SCENE.boxes[2]) > 0.5
    outside = interaction._InteractionPromptsImpl(pos_points=((5.0, 5.0),), neg_points=(),
                                                  bounding_box=((400.0, 300.0), (500.0, 400.0)))
    with pytest.raises(ValueError, match="empty or outside"):
        function.detect(None, image, outside)
    with pytest.raises(ValueError, match="kind=str:tracker or -p kind=str:interactor"):
        native.create("detector")
