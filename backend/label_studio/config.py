"""The parts of a Label Studio labeling config the backend needs: Video tags, VideoRectangle tags, labels, and for
masks the frame image lists (``<Image valueList="$frames">``) with their BrushLabels and smart KeyPointLabels."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoTag:
    """``<Video name value frameRate>``; `value` and `frame_rate` may name task data keys (``$video``, ``$fps``)."""

    name: str
    value_key: str
    frame_rate: float | None = None
    frame_rate_key: str | None = None

    def url(self, data: Mapping) -> str:
        """The task's video reference, or ValueError naming the missing key."""
        ref = data.get(self.value_key)
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError(f"task data has no video URL under {self.value_key!r} (Video tag {self.name!r}); keys: {sorted(data)}")
        return ref.strip()

    def fps(self, data: Mapping, default: float) -> float:
        """Frame rate LS uses for this task: the attribute, the task data key it names, or LS's default (24)."""
        if self.frame_rate is not None:
            return self.frame_rate
        if self.frame_rate_key and data.get(self.frame_rate_key) is not None:
            fps = _number(data[self.frame_rate_key], f"task data {self.frame_rate_key!r}")
            if fps <= 0:
                raise ValueError(f"task data {self.frame_rate_key!r} must be a positive frame rate, got {fps}")
            return fps
        return float(default)


@dataclass(frozen=True)
class LabelConfig:
    videos: dict[str, VideoTag] = field(default_factory=dict)
    rectangles: dict[str, str] = field(default_factory=dict)  # VideoRectangle name -> toName
    labels: dict[str, list[str]] = field(default_factory=dict)  # toName -> label values
    image_lists: dict[str, str] = field(default_factory=dict)  # <Image valueList="$key"> name -> task data key
    brushes: dict[str, str] = field(default_factory=dict)  # BrushLabels name -> toName
    keypoints: dict[str, str] = field(default_factory=dict)  # KeyPointLabels name -> toName

    def brush_for(self, image_name: str) -> str | None:
        """The BrushLabels tag drawing on this image list (the first one), or None: masks cannot be returned there."""
        return next((name for name, to in self.brushes.items() if to == image_name), None)

    @property
    def has_masks(self) -> bool:
        """True when some image list carries both BrushLabels (the masks) and KeyPointLabels (the clicks)."""
        return any(self.brush_for(to) for to in self.keypoints.values() if to in self.image_lists)

    def video_for(self, to_name: str) -> VideoTag:
        """The Video tag a region points at; a config with a single Video tag accepts any to_name."""
        if to_name in self.videos:
            return self.videos[to_name]
        if len(self.videos) == 1 and not to_name:
            return next(iter(self.videos.values()))
        raise ValueError(f"region points at {to_name!r}, but the labeling config has Video tags {sorted(self.videos)}")


def _number(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None


def _attr(el: ET.Element, name: str) -> str | None:
    """Attribute lookup that ignores case, since LS configs in the wild mix `toName`/`toname`."""
    for key, value in el.attrib.items():
        if key.lower() == name.lower():
            return value
    return None


def parse_label_config(xml: str) -> LabelConfig:
    """Parse the XML; ValueError when it is not XML or has no Video tag."""
    if not isinstance(xml, str) or not xml.strip():
        raise ValueError("no labeling config: send 'label_config' in /predict or call /setup with 'schema'")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ValueError(f"labeling config is not valid XML: {err}") from None
    videos: dict[str, VideoTag] = {}
    rectangles: dict[str, str] = {}
    labels: dict[str, list[str]] = {}
    image_lists: dict[str, str] = {}
    brushes: dict[str, str] = {}
    keypoints: dict[str, str] = {}
    for el in root.iter():
        tag = el.tag.lower()
        name = _attr(el, "name") or ""
        if tag == "video":
            value = (_attr(el, "value") or "").strip()
            if not value.startswith("$"):
                raise ValueError(f"Video tag {name!r}: value must name task data like '$video', got {value!r}")
            rate = (_attr(el, "frameRate") or "").strip()
            if rate.startswith("$"):
                videos[name] = VideoTag(name, value[1:], frame_rate_key=rate[1:])
            else:
                fps = _number(rate, f"Video tag {name!r} frameRate") if rate else None
                if fps is not None and fps <= 0:
                    raise ValueError(f"Video tag {name!r}: frameRate must be positive, got {fps}")
                videos[name] = VideoTag(name, value[1:], frame_rate=fps)
        elif tag == "videorectangle":
            rectangles[name] = _attr(el, "toName") or ""
        elif tag == "image" and (_attr(el, "valueList") or "").strip().startswith("$"):
            image_lists[name] = (_attr(el, "valueList") or "").strip()[1:]
        elif tag == "brushlabels":
            brushes[name] = _attr(el, "toName") or ""
        elif tag == "keypointlabels":
            keypoints[name] = _attr(el, "toName") or ""
        elif tag == "labels":
            values = [_attr(child, "value") for child in el if child.tag.lower() == "label"]
            labels.setdefault(_attr(el, "toName") or "", []).extend(v for v in values if v)
    if not videos:
        raise ValueError("labeling config has no <Video> tag: this backend tracks boxes on video "
                         "(see config/label_studio/video_tracks.xml, or video_masks.xml for masks)")
    return LabelConfig(videos=videos, rectangles=rectangles, labels=labels, image_lists=image_lists, brushes=brushes,
                       keypoints=keypoints)
