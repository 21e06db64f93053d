"""The README is the front page: short, its links into docs/ lead somewhere, and the files its
examples post exist (tests/delivery/test_doc_examples.py runs the examples themselves)."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_is_one_page() -> None:
    assert len(README.splitlines()) <= 250


def test_the_readme_has_the_two_commands_a_first_session_and_the_docs() -> None:
    for text in ("make serve", "make test", "make docs", "$ curl", "/docs", "/redoc"):
        assert text in README, text


def test_links_of_the_readme_lead_to_files() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (REPO / link).exists(), link


def test_files_the_examples_post_exist() -> None:
    pages = [README, *(p.read_text() for p in (REPO / "docs").rglob("*.md"))]
    posted = [path for text in pages for path in re.findall(r"=@(docs/[\w./-]+)", text)]
    assert posted
    for path in posted:
        assert (REPO / path).is_file(), path
