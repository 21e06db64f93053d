"""The README agrees with the code: its settings table lists every setting with the
default the service uses, and the files its examples post exist."""

from __future__ import annotations

import re

from service.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _table() -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        m = re.match(r"\| `(AUSCULT_[A-Z_]+)`(?: / `(AUSCULT_[A-Z_]+)`)? \| ([^|]*) \|", line)
        if m:
            names = [n for n in m.group(1, 2) if n]
            defaults = [d.strip().strip("`") for d in m.group(3).split(" / ")]
            if len(defaults) != len(names):
                defaults = [m.group(3).strip()] * len(names)
            rows.update(zip(names, defaults, strict=True))
    return rows


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    rows = _table()
    for name, field in Settings.model_fields.items():
        var = f"AUSCULT_{name.upper()}"
        assert var in rows, f"{var} is missing from the README's settings table"
        default = field.get_default(call_default_factory=True)
        if isinstance(default, bool):
            assert rows[var] in (str(int(default)), str(default).lower()), (var, rows[var])
        elif isinstance(default, int | float):
            assert float(rows[var].replace(",", "")) == default, (var, rows[var], default)


def test_files_the_examples_post_exist() -> None:
    posted = re.findall(r"=@(docs/[\w./-]+)", README)
    assert posted
    for path in posted:
        assert (REPO / path).is_file(), path
