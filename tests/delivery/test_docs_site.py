"""The documentation site (docs/, mkdocs.yml) builds with --strict (no broken link or anchor),
offline, with every page in the navigation, and agrees with the code where it lists it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from service.settings import Settings
from tests.conftest import REPO

DOCS = REPO / "docs"


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_builds_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for page in site.rglob("*.html"):
        external = re.findall(r'(?:src|href)="((?:https?:)?//[^"]+)"', page.read_text())
        assert not [url for url in external if not url.startswith("http://127.0.0.1")], (
            page,
            external,
        )


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    nav = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} - {"examples/README.md"}
    assert pages == nav


def test_files_the_pages_name_exist() -> None:
    for page in [REPO / "README.md", REPO / "bench" / "README.md", *DOCS.rglob("*.md")]:
        named = re.findall(
            r"`((?:service|training|bulk|bench|deploy|docker|tests|docs)/[\w./-]*\w)`",
            page.read_text(),
        )
        for path in named:
            assert (REPO / path).exists(), (page.name, path)


def _settings_table(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(AUSCULT_[A-Z_]+)`(?: / `(AUSCULT_[A-Z_]+)`)? \| ([^|]*) \|", line)
        if m:
            names = [n for n in m.group(1, 2) if n]
            defaults = [d.strip().strip("`") for d in m.group(3).split(" / ")]
            if len(defaults) != len(names):
                defaults = [m.group(3).strip()] * len(names)
            rows.update(zip(names, defaults, strict=True))
    return rows


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    rows = _settings_table((DOCS / "operations.md").read_text())
    for name, field in Settings.model_fields.items():
        var = f"AUSCULT_{name.upper()}"
        assert var in rows, f"{var} is missing from the settings table of docs/operations.md"
        default = field.get_default(call_default_factory=True)
        if isinstance(default, bool):
            assert rows[var] in (str(int(default)), str(default).lower()), (var, rows[var])
        elif isinstance(default, int | float):
            assert float(rows[var].replace(",", "")) == default, (var, rows[var], default)
