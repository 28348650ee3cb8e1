"""Integration tests: a real kube-apiserver + etcd with the CRDs and RBAC installed, and (where
a test asks) the controller with agents on libvirt's test driver as simulated hosts."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from kubenova_devenv import stack


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Stack]:
    s = stack.Stack(pathlib.Path(tmp_path_factory.mktemp("integration")), host_count=0)
    try:
        s.start(components=False)
        yield s
    finally:
        s.stop()
