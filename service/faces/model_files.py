"""dlib's model files, as the ``face-recognition-models`` package ships them (no dlib import).

Training reads the face network's weights from here (``training/backbones``) and the landmark
model to measure the alignment template; the service's face finder loads its detectors here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"


def face_models_file(name: str) -> Path:
    """A model file shipped in the ``face-recognition-models`` package (dlib's .dat files).

    The package's ``__init__`` imports ``pkg_resources`` (gone from new setuptools), so the file
    is located through the import system without importing the package.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"dlib's {name} is missing: pip install face-recognition-models==0.3.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


def landmarks_model_path() -> Path:
    return face_models_file(LANDMARKS_FILE)
