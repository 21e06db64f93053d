"""The examples of README.md and of the docs site (docs/) run against the service, serving the
committed bundles, and answer what the pages say they answer.

Which blocks run, in a scratch folder shared by all pages (it has `docs/` of the repository
and a `.venv/bin/python` that is this interpreter, so the commands run as written):

- every ```console block: each `$ ` line is a command (continued by lines ending in `\\`),
  the lines after it what it prints. It must exit 0; a printed `HTTP/1.1 NNN` line must be
  the status it gets, the headers shown must be there, and every `"key":"text"` and
  `"key":number` of a printed JSON body must be in the body it gets (numbers as far as the
  digits shown: 0.907 matches 0.9071…); any other output, line by line. `…` and `...` stand
  for what the page leaves out.
- a ```bash or ```python block right under `<!-- test: run -->`: it must exit 0.
- a block right under `<!-- test: setup -->` (making the clips the others send): run once,
  before any example.
- a ```console block right under `<!-- test: skip -->` is not run.

`127.0.0.1:8000` in a command is the test's service, started as `make serve` starts it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import RunningService, start_service, stop_service

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
EXAMPLE_HOST = "127.0.0.1:8000"
MARKER = re.compile(r"<!-- test: (run|setup|skip) -->")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str | None  # run, setup, skip or None


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, each with the marker right above it."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        above = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = MARKER.fullmatch(above)
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        found.append(
            Block(
                page, start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else None
            )
        )
        i += 1
    return found


def console_steps(code: str) -> list[tuple[str, str]]:
    """A console block → [(command, the output the page shows)]."""
    steps: list[tuple[str, list[str]]] = []
    continued = False
    for line in code.splitlines():
        if line.startswith("$ ") and not continued:
            steps.append((line[2:], []))
            continued = line.endswith("\\")
        elif continued:
            steps[-1] = (steps[-1][0] + "\n" + line, steps[-1][1])
            continued = line.endswith("\\")
        elif steps:
            steps[-1][1].append(line)
    return [(cmd, "\n".join(out)) for cmd, out in steps]


def run_shell(command: str, cwd: Path, service: RunningService) -> subprocess.CompletedProcess[str]:
    command = command.replace(EXAMPLE_HOST, f"127.0.0.1:{service.port}")
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_block(block: Block, cwd: Path, service: RunningService) -> None:
    where = f"{block.page.relative_to(REPO)}:{block.line}"
    if block.lang == "python":
        script = cwd / "example.py"
        script.write_text(block.code.replace(EXAMPLE_HOST, f"127.0.0.1:{service.port}"))
        done = subprocess.run(
            [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=300
        )
    else:
        done = run_shell(block.code, cwd, service)
    assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def _compact(body: str) -> str:
    try:
        return json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return body


def check_output(shown: str, got: str, where: str) -> None:
    """What a console example prints on the page agrees with what the command printed."""
    shown_lines = shown.splitlines()
    if shown_lines and shown_lines[0].startswith("HTTP/"):
        head, _, body = got.replace("\r\n", "\n").partition("\n\n")
        got_lines = head.splitlines()
        status = shown_lines[0].split()[1]
        assert got_lines[0].split()[1] == status, f"{where}: {got_lines[0]}, not {status}"
        names = {ln.split(":", 1)[0].lower() for ln in got_lines[1:]}
        blank = shown_lines.index("") if "" in shown_lines else len(shown_lines)
        for line in shown_lines[1:blank]:
            assert line.split(":", 1)[0].lower() in names, f"{where}: no header {line}"
        shown, got = "\n".join(shown_lines[blank + 1 :]), body
    if not shown.lstrip().startswith(("{", "[")):
        lines = got.splitlines()
        for line in shown.splitlines():
            if line.strip() and "…" not in line and "..." not in line:
                assert line in lines, f"{where}: {line!r} not in {got[:2000]}"
        return
    got = _compact(got.strip())
    for key, text in re.findall(r'"([\w.-]+)":"([^"…]*)"', shown):
        assert f'"{key}":"{text}"' in got, f'{where}: "{key}":"{text}" not in {got[:2000]}'
    for key, number in re.findall(r'"([\w.-]+)":(-?\d+(?:\.\d+)?)', shown):
        digits = len(number.split(".")[1]) if "." in number else 0
        values = [float(v) for v in re.findall(rf'"{re.escape(key)}":(-?[\d.eE+-]+)', got)]
        assert any(round(v, digits) == pytest.approx(float(number)) for v in values), (
            f'{where}: "{key}":{number} not in {got[:2000]}'
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    if shutil.which("curl") is None:
        pytest.skip("the examples use curl, which is not installed")
    logs = tmp_path_factory.mktemp("doc-examples-logs")
    running = start_service(
        logs,
        AUSCULT_ARTIFACTS_DIR=str(REPO / "artifacts"),
        AUSCULT_DEFAULT_MODEL="gearbox",
        AUSCULT_LOG_LEVEL="warning",
    )
    yield running
    stop_service(running)


@pytest.fixture(scope="module")
def workdir(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder where the pages' commands run as written, their setup blocks done."""
    root = tmp_path_factory.mktemp("doc-examples")
    (root / "docs").symlink_to(REPO / "docs")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    done: set[str] = set()
    for page in PAGES:
        for block in blocks(page):
            if block.marker == "setup" and block.code not in done:
                run_block(block, root, service)
                done.add(block.code)
    return root


def test_pages_have_examples_to_run() -> None:
    runnable = [b for p in PAGES for b in blocks(p) if runs(b)]
    assert len(runnable) >= 8, runnable
    for page in (REPO / "README.md", REPO / "docs" / "getting-started.md"):
        assert any(b.lang == "console" for b in blocks(page)), page


def runs(block: Block) -> bool:
    return (block.lang == "console" and block.marker != "skip") or block.marker == "run"


EXAMPLE_PAGES = [p for p in PAGES if any(runs(b) for b in blocks(p))]


@pytest.mark.parametrize(
    "page", EXAMPLE_PAGES, ids=[str(p.relative_to(REPO)) for p in EXAMPLE_PAGES]
)
def test_examples_answer_what_the_page_shows(
    page: Path, workdir: Path, service: RunningService
) -> None:
    for block in blocks(page):
        where = f"{page.relative_to(REPO)}:{block.line}"
        if block.lang == "console" and block.marker != "skip":
            for command, shown in console_steps(block.code):
                done = run_shell(command, workdir, service)
                assert done.returncode == 0, f"{where}: {command}\n{done.stdout}\n{done.stderr}"
                check_output(shown, done.stdout, where)
        elif block.marker == "run":
            run_block(block, workdir, service)
