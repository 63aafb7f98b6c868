"""Every command in docs/scaling.md (scaling out on Ray Serve) works as written: its options are
ones the program takes (parsed by the program's own parser: the service's, Ray's and Serve's click
commands), and the files, extras, images, profiles and names it uses exist. A command of a kind
this test does not know fails it, so a new command comes with a check."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from service.__main__ import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCALING = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
RAYSERVICE = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "rayservice.yaml").read_text())
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def page_commands() -> list[list[str]]:
    """The commands of the page's bash blocks, split as a shell would (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", SCALING, re.S)
    assert blocks, "docs/scaling.md has no bash block"
    return [words for block in blocks for line in block.splitlines() if (words := _split(line))]


def _split(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def check_pip(words: list[str]) -> None:
    assert words[:3] == ["pip", "install", "-e"]
    match = re.fullmatch(r"\.\[(\w+)\]", words[3])
    assert match and match[1] in EXTRAS


def check_service(words: list[str]) -> None:
    args = build_parser().parse_args(words[3:])
    overrides = {name: value for name in Settings.model_fields if (value := getattr(args, name))}
    Settings(**overrides)
    assert args.ray


def _click(command, words: list[str]) -> None:
    """Parse ``words`` with a click command, as running it would first do (nothing runs)."""
    command.make_context(words[0], words[1:])


def check_ray(words: list[str]) -> None:
    from ray.scripts.scripts import cli

    assert words[1] == "start"
    _click(cli.get_command(None, "start"), words[1:])


def check_serve(words: list[str]) -> None:
    from ray.serve.scripts import cli

    assert words[1] in ("run", "deploy")
    _click(cli.get_command(None, words[1]), words[1:])
    assert (ROOT / words[2]).is_file()


def check_docker(words: list[str]) -> None:
    if words[1] == "build":
        tag = words[words.index("-t") + 1]
        (extra,) = [w.split("=")[1] for w in words if w.startswith("EXTRAS=")]
        assert extra in EXTRAS and words[-1] == "."
        images = {
            RAYSERVICE["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
                "containers"
            ][0]["image"],
            COMPOSE["services"]["api-ray"]["image"],
        }
        assert images == {tag}
    else:
        assert words[1:3] == ["compose", "--profile"] and words[4] == "up"
        profile, service = words[3], words[5]
        assert profile in COMPOSE["services"][service]["profiles"]


def check_kubectl(words: list[str]) -> None:
    if words[1] == "apply":
        assert words[2] == "-f" and (ROOT / words[3]).is_file()
        assert yaml.safe_load((ROOT / words[3]).read_text())["kind"] == "RayService"
    else:
        assert words[1] == "port-forward"
        # KubeRay names the Service of a RayService's Serve proxies <name>-serve-svc
        assert words[2] == f"service/{RAYSERVICE['metadata']['name']}-serve-svc"
        serve = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
        assert int(words[3]) == serve["http_options"]["port"]


CHECKS: dict[str, Callable[[list[str]], None]] = {
    "pip": check_pip,
    "python": check_service,
    "ray": check_ray,
    "serve": check_serve,
    "docker": check_docker,
    "kubectl": check_kubectl,
}


def test_page_has_commands_of_every_way_to_run():
    programs = {words[0] for words in page_commands()}

    assert programs == set(CHECKS)


@pytest.mark.parametrize("words", page_commands(), ids=" ".join)
def test_command_works_as_written(words):
    if words[0] in ("ray", "serve"):
        pytest.importorskip("ray", reason="needs the ray extra")
    assert words[0] in CHECKS, f"no check for {' '.join(words)}: add one"
    CHECKS[words[0]](words)
