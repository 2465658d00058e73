"""ScribbleBox: Curve-VOT box tracks and scribble-propagated masks as an ML backend.

The import name is ``scribblebox``; the design card's top-level folders are mapped into it:
``models/`` -> ``scribblebox.models``, ``backend/`` -> ``scribblebox.backend``, ``config/`` -> ``scribblebox.config``.
"""
from setuptools import setup

PACKAGES = {
    "scribblebox": "scribblebox",
    "scribblebox.evaluation": "scribblebox/evaluation",
    "scribblebox.training": "scribblebox/training",
    "scribblebox.models": "models",
    "scribblebox.models.trackers": "models/trackers",
    "scribblebox.models.networks": "models/networks",
    "scribblebox.backend": "backend",
    "scribblebox.backend.label_studio": "backend/label_studio",
    "scribblebox.backend.cvat": "backend/cvat",
    "scribblebox.config": "config",
}

setup(
    name="scribblebox",
    version="0.1.0",
    description="Video object annotation backend for Label Studio and CVAT: Curve-VOT box tracks and propagated masks",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"scribblebox.config": ["*.yaml", "label_studio/*.xml"],
                  "scribblebox.models": ["weights/*.pt", "weights/*.md"]},
    install_requires=[
        "numpy>=1.24",
        "opencv-contrib-python-headless>=4.8",
        "av>=12",
        "flask>=3.0",
        "gunicorn>=21",
        "pyyaml>=6",
        "requests>=2.31",
    ],
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "redis>=5", "rq>=3.0"],
                    "redis": ["redis>=5", "rq>=3.0"],
                    "cvat": ["cvat-sdk[masks]==2.80.0", "cvat-cli==2.80.0", "nuclio-sdk==0.6.3"],
                    "learned": ["torch>=2.1"]},
    entry_points={"console_scripts": ["scribblebox=scribblebox.cli:main"]},
)
