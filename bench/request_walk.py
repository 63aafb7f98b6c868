"""The walk of one request through the service's code: which modules it enters, how it hops.

Serves the default bundle in this process (the app ``python -m service`` builds), sends one
warm-up request, then traces one more, ``POST /explain/lime`` by default, on every thread
(``sys.setprofile``): each Python call from one ``service`` module into another is a hop. It
prints the modules entered, in the order first entered, and the hops (caller -> callee, each
pair once), then the two counts. Architecture reading, not speed: the counts do not depend on
the machine.

    python bench/request_walk.py                        # POST /explain/lime?num_samples=32
    python bench/request_walk.py --path /predict
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACE = ROOT.parent / "shared" / "data" / "celebs8" / "tom_hanks" / "9882.png"


def module_of(filename: str) -> str | None:
    """``service/api/explain.py`` -> ``service.api.explain``; None outside ``service``."""
    path = Path(filename)
    try:
        relative = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    if relative.parts[0] != "service" or path.suffix != ".py":
        return None
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Walk:
    """Records the service modules entered and the hops between them."""

    def __init__(self) -> None:
        self.modules: dict[str, None] = {}  # insertion-ordered set
        self.hops: dict[tuple[str, str], None] = {}
        self.lock = threading.Lock()
        self.on = False

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on or event != "call":
            return
        callee = module_of(frame.f_code.co_filename)
        if callee is None:
            return
        caller = None
        back = frame.f_back
        while back is not None and caller is None:  # the nearest service frame below
            caller = module_of(back.f_code.co_filename)
            back = back.f_back
        with self.lock:
            self.modules.setdefault(callee)
            if caller is not None and caller != callee:
                self.hops.setdefault((caller, callee))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path", default="/explain/lime?num_samples=32", help="default: %(default)s"
    )
    parser.add_argument("--face", type=Path, default=DEFAULT_FACE, help="default: %(default)s")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from service.app import create_app

    files = {"file": ("face.png", args.face.read_bytes(), "image/png")}
    walk = Walk()
    # every thread the app starts (the server's, the engine's, the worker pool's) is profiled
    # from its start; the profile records only while ``walk.on``
    threading.setprofile(walk.profile)
    sys.setprofile(walk.profile)
    app = create_app()
    try:
        with TestClient(app) as client:
            warm = client.post(args.path, files=files)  # lazy imports, pools filled
            warm.raise_for_status()
            state = app.state.service
            state.explanation_cache = type(state.explanation_cache)(1)  # no cache hit
            walk.on = True
            answer = client.post(args.path, files=files)
            walk.on = False
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    answer.raise_for_status()
    print(f"POST {args.path}: {answer.status_code}")
    print("\nmodules entered:")
    for module in walk.modules:
        print(f"  {module}")
    print("\nhops (caller -> callee):")
    for caller, callee in walk.hops:
        print(f"  {caller} -> {callee}")
    print(f"\n{len(walk.modules)} modules, {len(walk.hops)} hops")


if __name__ == "__main__":
    main()
