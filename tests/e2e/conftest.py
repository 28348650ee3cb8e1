"""The end-to-end test bed: a real control plane, two libvirtd + QEMU hosts, the controller and
one agent per host, all started here and stopped at the end of the session."""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections.abc import Iterator

import pytest
import yaml

from kubenova_devenv import stack


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Stack]:
    s = stack.Stack(pathlib.Path(tmp_path_factory.mktemp("e2e")), host_count=2)
    with s:
        s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(s.image_manifest()))
        yield s


@pytest.fixture
def namespace(bed: stack.Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from unique_namespace(bed, request, "t")


def unique_namespace(
    bed: stack.Stack, request: pytest.FixtureRequest, prefix: str
) -> Iterator[str]:
    """A namespace named after the test (unique), whose Servers are deleted afterwards.

    No namespace controller runs in the test bed (no kube-controller-manager), so the
    namespace itself stays; names are unique per test."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))
    name = f"{prefix}-{slug[:40].strip('-')}-{digest}"
    bed.kubectl("create", "namespace", name)
    yield name
    bed.kubectl(
        "delete", "servers", "--all", "-n", name, "--timeout=120s", check=False, timeout=150
    )
