"""The README and the pages under docs/ (and the recorded runs in bench/results/) hold together:
every relative link reaches a file, every ``#anchor`` a heading of the page it names, every
shell block parses with bash's own parser and every Python block with ``ast.parse``. The README
stays a first screen that maps every page."""

from __future__ import annotations

import ast
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted(
    [README, ROOT / "models" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
    + list((ROOT / "bench" / "results").glob("*.md"))
)
SHELLS = ("bash", "sh", "shell", "console")
README_MAX_LINES = 200
SCREENSHOT = ROOT / "docs" / "images" / "page.png"
SCREENSHOT_MAX_BYTES = 400_000

FENCE = re.compile(r"^(`{3,}|~{3,})[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
# a file or folder of the repository named in a code span: `service/faces/finder.py`
REPO_PATH = re.compile(r"`((?:service|training|tests|bench|deploy|models|docs)/[\w./-]*)`")
WRITTEN_BY_RUNS = ("tests/artifacts/",)  # folders that test and bench runs create


@dataclass(frozen=True)
class Block:
    page: Path
    language: str
    text: str
    line: int  # of the block's first line of code, counting from 1

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.language})"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, with their language tag."""
    text = page.read_text(encoding="utf-8")
    return [
        Block(page, match[2].lower(), match[3], text.count("\n", 0, match.start(3)) + 1)
        for match in FENCE.finditer(text)
    ]


def _blank(match: re.Match[str]) -> str:
    return re.sub(r"[^\n]", " ", match[0])


def outside_blocks(page: Path) -> str:
    """``page`` with its fenced blocks blanked to spaces (a ``#`` comment there is no heading),
    so that line numbers stay right."""
    return FENCE.sub(_blank, page.read_text(encoding="utf-8"))


def prose(page: Path) -> str:
    """``page`` with its fenced blocks and inline code spans blanked (a link there is no link)."""
    return CODE_SPAN.sub(_blank, outside_blocks(page))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (markup dropped) in lower case, every character
    but letters, digits, ``_``, ``-`` and spaces removed, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of ``page``'s headings; a repeated heading's get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(outside_blocks(page)):
        base = slug(match[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in ``page``'s prose."""
    text = prose(page)
    found = [
        (text.count("\n", 0, match.start()) + 1, match[1])
        for pattern in (INLINE_LINK, REFERENCE_LINK)
        for match in pattern.finditer(text)
    ]
    return sorted(found)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with ``page``'s relative links, one line each (none: all good); a link may
    reach any file of the repository at ``root``, nothing outside it."""
    problems = []
    for line, target in links(page):
        if not target or EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        where = f"{page.relative_to(root)}:{line}: {target}"
        resolved = (page.parent / unquote(path)).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif not resolved.is_relative_to(root):
            problems.append(f"{where}: outside the repository")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


def shell_commands(block: Block) -> str:
    """The commands of a shell block: all of it, or for ``console`` the lines after a ``$``
    prompt (and their continuation lines)."""
    if block.language != "console":
        return block.text
    commands, continued = [], False
    for line in block.text.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line[2:] if not continued else line)
            continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


def bash_syntax_error(script: str) -> str:
    """bash's own complaint about ``script`` (read, never run: ``bash -n``); empty if none."""
    result = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, timeout=30, check=False
    )
    return result.stderr.strip() if result.returncode else ""


def python_syntax_error(source: str) -> str:
    try:
        ast.parse(source)
    except SyntaxError as error:
        return f"line {error.lineno}: {error.msg}"
    return ""


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


SHELL_BLOCKS = [b for page in PAGES for b in code_blocks(page) if b.language in SHELLS]
PYTHON_BLOCKS = [b for page in PAGES for b in code_blocks(page) if b.language in ("python", "py")]


def test_the_pages_are_found():
    assert README in PAGES
    assert {"api.md", "training.md", "operations.md"} <= {p.name for p in PAGES}
    assert SHELL_BLOCKS, "no shell blocks found: is the fence pattern right?"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_reach_a_file_and_a_heading(page: Path):
    assert broken_links(page) == []


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_shell_blocks_parse_with_bash(block: Block):
    assert bash_syntax_error(shell_commands(block)) == ""


def test_python_blocks_parse():
    errors = [
        f"{block}: {error}" for block in PYTHON_BLOCKS if (error := python_syntax_error(block.text))
    ]

    assert errors == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_the_files_named_exist(page: Path):
    """A module or file the text names by its path is there (packages move; the text must
    follow)."""
    named = set(REPO_PATH.findall(page.read_text(encoding="utf-8")))
    missing = [p for p in named if not p.startswith(WRITTEN_BY_RUNS) and not (ROOT / p).exists()]

    assert sorted(missing) == []


def test_readme_is_a_first_screen_that_maps_every_page():
    text = README.read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for _, target in links(README)}

    assert len(text.splitlines()) <= README_MAX_LINES
    assert {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} <= linked
    assert "docs/images/page.png" in linked


def test_the_screenshot_is_a_small_png():
    data = SCREENSHOT.read_bytes()

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) <= SCREENSHOT_MAX_BYTES


# The checks themselves: each must catch what it is there to catch.


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## The `/predict` path: yes\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n[fine](docs/other.md#the-predict-path-yes) [self](#title)\n"
        "[gone](docs/missing.md) [no heading](docs/other.md#nope)\n"
        "`[in code](docs/missing.md)` [web](https://example.com/x)\n"
        "```bash\n# [not a heading](docs/missing.md)\n```\n"
    )

    problems = broken_links(page, root=tmp_path)

    assert [p.split(": ", 2)[1] for p in problems] == ["docs/missing.md", "docs/other.md#nope"]


def test_a_malformed_command_is_reported():
    assert bash_syntax_error("curl -F file=@face.jpg localhost:8000/predict\n") == ""
    assert bash_syntax_error("echo 'unclosed\n") != ""
    assert bash_syntax_error("if true; then echo; fi; done\n") != ""
    console = Block(README, "console", "$ echo ok &&\n$ ls (\noutput (\n", 1)
    assert shell_commands(console) == "echo ok &&\nls (\n"
    assert bash_syntax_error(shell_commands(console)) != ""


def test_a_python_block_that_does_not_parse_is_reported():
    assert python_syntax_error("import ast\nast.parse('x = 1')\n") == ""
    assert python_syntax_error("def f(:\n    pass\n").startswith("line 1:")


def test_github_anchors():
    assert slug("Batching `/predict` in Ray mode") == "batching-predict-in-ray-mode"
    assert slug('"None of the eight": the open-set study') == "none-of-the-eight-the-open-set-study"
    assert slug("Face detection's worst cases") == "face-detections-worst-cases"
    assert slug("Jobs: long explanations with progress") == "jobs-long-explanations-with-progress"
