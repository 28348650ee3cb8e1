"""A controller in a cluster that holds nothing yet (no Flavor, no Image, no host): the first
Server created there is not left in a silent BUILD; it says within seconds why it waits."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(180)


def test_the_first_server_of_an_empty_cluster_says_why_it_waits(tmp_path: pathlib.Path) -> None:
    bed = stack.Stack(tmp_path / "empty", host_count=0)
    try:
        bed.start(components=False)
        bed.start_controller()
        server = {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Server",
            "metadata": {"name": "first", "namespace": "default"},
            "spec": {"flavorRef": "m1.none", "imageRef": "no-image"},
        }
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(server))

        def scheduled() -> dict[str, str]:
            out = bed.kubectl("get", "srv", "first", "-n", "default", "-o", "yaml").stdout
            return condition(yaml.safe_load(out), "Scheduled")

        got = eventually(lambda: scheduled().get("reason"), 30, what="a Scheduled condition")
        assert got == "FlavorNotFound", scheduled()
        assert "m1.none" in scheduled()["message"]
    finally:
        bed.stop()
