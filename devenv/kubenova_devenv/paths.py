"""Where the environment keeps what it builds (a cache that survives between runs)."""

from __future__ import annotations

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def cache_dir() -> pathlib.Path:
    """``$KUBENOVA_CACHE``, else ``~/.cache/kubenova``: outside the work tree, so that a fresh
    clone (as CI makes) reuses the control-plane binaries and guest image built before."""
    env = os.environ.get("KUBENOVA_CACHE")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = pathlib.Path(env) if env else pathlib.Path(xdg) / "kubenova"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bin_dir() -> pathlib.Path:
    path = cache_dir() / "bin"
    path.mkdir(parents=True, exist_ok=True)
    return path


def binary(name: str) -> pathlib.Path:
    """A control-plane binary built by ``hack/setup.sh``; fails clearly when it is missing."""
    path = bin_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup` (hack/setup.sh) first")
    return path
