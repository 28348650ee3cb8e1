"""The package layout keeps the standard library reachable: ``operator/`` and ``node-agent/``
are folders, not packages, so ``import operator`` is still the standard library's."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import sysconfig

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_component_folders_are_not_packages() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()
    assert not (REPO / "node-agent" / "__init__.py").exists()
    assert (REPO / "operator" / "kubenova_operator" / "__init__.py").exists()
    assert (REPO / "node-agent" / "kubenova_agent" / "__init__.py").exists()


def test_import_operator_is_the_standard_library_from_the_repository_root() -> None:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    code = (
        "import operator, kubenova_operator, kubenova_agent, kubenova_api\n"
        "assert operator.itemgetter(1)([0, 7]) == 7\n"
        "print(operator.__file__)"
    )
    for cwd in (REPO, REPO / "operator"):
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
        )
        assert pathlib.Path(out.stdout.strip()).resolve().parent == stdlib, out.stdout


def test_console_scripts_are_installed() -> None:
    bindir = pathlib.Path(sys.executable).parent
    for name in ("kubenova", "kubenova-controller", "kubenova-agent", "kubenova-openstack-api"):
        assert (bindir / name).exists(), name
    out = subprocess.run(
        [str(bindir / "kubenova"), "--help"], capture_output=True, text=True, check=True
    )
    assert "crds" in out.stdout and "up" in out.stdout


def test_tests_run_in_the_projects_own_virtual_environment() -> None:
    """What the tests import comes from the venv made from pyproject.toml, never from the
    machine's site-packages (where a hand-installed package would make a test pass here and
    fail on a fresh machine)."""
    assert sys.prefix != sys.base_prefix, "not in a virtual environment: run `make setup`"
    base = pathlib.Path(sys.base_prefix).resolve()
    leaked = [
        p
        for p in sys.path
        if "site-packages" in p and pathlib.Path(p).resolve().is_relative_to(base)
    ]
    assert not leaked, f"the machine's site-packages are visible: {leaked}"
