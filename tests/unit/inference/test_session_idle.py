"""ONNX Runtime's threads do not spin once a run has ended: an idle service leaves both cores
to the event loop (``create_session``'s spinning option)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# In a process of its own, so that no other test's threads count: a session made as the
# service makes it runs a batch of 32, then the process sleeps; the CPU time spent while it
# sleeps is the threads' spinning. With spinning allowed between runs it was 40-50 ms of 200.
SCRIPT = """
import json, os, sys, time
from pathlib import Path
import numpy as np
from service.inference.engine import create_session
session = create_session(Path(sys.argv[1]), "cpu", threads=0)
batch = np.zeros((32, 3, 150, 150), dtype=np.float32)
name = session.get_inputs()[0].name
idle = []
for _ in range(3):
    session.run(None, {name: batch})
    before = os.times()
    time.sleep(0.2)
    after = os.times()
    idle.append((after.user + after.system - before.user - before.system) * 1000)
print(json.dumps(idle))
"""


def test_idle_threads_do_not_spin_after_a_run(default_bundle: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(default_bundle / "model.int8.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    idle_ms = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(idle_ms) == 3
    assert min(idle_ms) < 15, f"CPU ms spent in 200 ms of idleness after each run: {idle_ms}"
