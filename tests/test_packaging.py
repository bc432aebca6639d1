"""A non-editable install ships every package: pyproject.toml's `packages` lists each folder of src/condiff with an
`__init__.py` (the list is explicit because `pipelines/` and `model_cards/` live outside src/)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_of_src_condiff_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    inits = (ROOT / "src" / "condiff").rglob("__init__.py")
    found = {".".join(init.parent.relative_to(ROOT / "src").parts) for init in inits}
    assert found <= listed, f"missing from pyproject's packages: {sorted(found - listed)}"
    for package, folder in config["package-dir"].items():
        assert package == "" or package in listed and (ROOT / folder / "__init__.py").is_file()
