"""The end-to-end test beds, each started here and stopped at the end of the session: a real
control plane, two libvirtd + QEMU hosts, the controller and one agent per host (``bed``); a
real single-node Kubernetes running the Helm chart (``node_bed``)."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
from collections.abc import Iterator

import pytest
import yaml

from kubenova_devenv import containerimage, node, stack


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
    gone = bed.kubectl(
        "delete", "servers", "--all", "-n", name, "--timeout=120s", check=False, timeout=150
    )
    if gone.returncode != 0:
        # A Server that cannot be deleted in two minutes is a stuck finalizer: a bug to see.
        left = bed.kubectl("get", "servers", "-n", name, "-o", "wide", check=False)
        raise AssertionError(f"Servers of {name} not deleted: {gone.stderr}\n{left.stdout}")


@dataclasses.dataclass(frozen=True)
class ChartBed:
    node: node.Node
    image: containerimage.BuiltImage


@pytest.fixture(scope="session")
def node_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartBed]:
    """A real single-node Kubernetes (kubelet, containerd, a libvirtd inside), with the image
    built from the Dockerfile (cached between runs) imported into its containerd."""
    image = containerimage.build()
    bed = node.Node(pathlib.Path(tmp_path_factory.mktemp("node")), images=(image.archive,))
    with bed:
        how = f"built in {image.built_seconds:.0f}s" if image.built_seconds else "cached"
        print(
            f"node bed Ready in {bed.started_seconds:.1f}s, {bed.rss_bytes() / 2**30:.2f} GiB; "
            f"image {image.ref} ({image.size_bytes / 2**20:.0f} MiB, {how})"
        )
        yield ChartBed(bed, image)
