"""The package ships everything it needs when installed without the repository (conf/ as package data)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")


def test_every_package_and_config_group_is_listed_for_installation():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "lth_runner").rglob("__init__.py")}
    groups = {
        "lth_runner.conf." + ".".join(d.relative_to(REPO / "conf").parts)
        for d in (REPO / "conf").rglob("*")
        if d.is_dir() and any(d.glob("*.yaml"))
    }
    assert code | groups | {"lth_runner.conf"} == listed
