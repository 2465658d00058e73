"""ScribbleBox: cheap video object annotation (Curve-VOT box tracks, propagated masks) for Label Studio and CVAT."""

__version__ = "0.1.0"
