"""``python -m service`` for the browser tests, with a job's partial maps paced by the test.

What the page shows of a running job (a map redrawn as it refines, a progress bar, a Cancel
button) must not depend on how fast the CPU computes it: on a fast one a job could end before
the page drew a second map. So every partial map a method reports is published, each at least
``job_event_interval_s`` after the last (the service would drop the ones in between), and the
job's work waits for that: a job of N batches runs at least N - 1 event intervals and its event
stream carries at least every other map, whatever the CPU. Everything else is the service as
``python -m service`` runs it (same arguments, same main).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from service import explanations
from service.__main__ import main


class PacedMaps(explanations.PartialMaps):
    def report(self, values: np.ndarray, scale: float, negligible: bool) -> None:
        while (wait := self.last + self.interval - time.monotonic()) > 0:
            time.sleep(wait)
        super().report(values, scale, negligible)


if __name__ == "__main__":
    explanations.PartialMaps = PacedMaps
    sys.exit(main())
