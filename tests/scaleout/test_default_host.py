"""The single-process host stays the default and does not need Ray: without ``--ray``,
``python -m service`` never imports it (Ray is the ``ray`` extra)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import sys
from service.__main__ import build_parser
from service.app import create_app
from service.settings import Settings

args = build_parser().parse_args([])
assert args.ray is False
create_app(Settings(_env_file=None))
print(sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
"""


def test_the_default_host_does_not_import_ray():
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_ray_flag_is_listed_in_help():
    from service.__main__ import build_parser

    help_text = build_parser().format_help()

    assert "--ray " in help_text and "--ray-address" in help_text
