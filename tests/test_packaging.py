"""The package ships everything it needs when installed without the repository (conf/ as package data)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

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


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_third_party_import_is_a_declared_dependency():
    # A module installed by hand on a development machine, but not declared, breaks a fresh install (and CI).
    declared = {
        _requirement_name(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for source in (REPO / "lth_runner").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in {"lth_runner", "__future__"}:
                    continue
                distributions = {_requirement_name(d) for d in providers.get(top, [top])}
                if not distributions & declared:
                    missing.setdefault(top, set()).add(str(source.relative_to(REPO)))
    assert not missing, f"imported but not in [project] dependencies: {missing}"
