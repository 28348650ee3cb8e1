"""The CRDs in deploy/crds/ are exactly what the models generate, and they are readable."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from kubenova_api import common, crds, resources

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_the_generator(kind: crds.Kind) -> None:
    committed = (REPO / "deploy" / "crds" / crds.file_name(kind)).read_text()
    assert committed == crds.render(kind), "run `kubenova crds` and commit the result"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    return out


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda k: k.kind)
def test_every_spec_field_is_described_and_structural(kind: crds.Kind) -> None:
    root = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root["properties"]["spec"], "spec"):
        assert node.get("description"), f"{kind.kind} {path} has no description"
        assert "type" in node, f"{kind.kind} {path} has no type"
        assert "$ref" not in node and "anyOf" not in node


def test_server_is_selectable_by_host_and_has_status_subresource() -> None:
    server = next(k for k in crds.KINDS if k.kind == "Server")
    version = crds.crd(server)["spec"]["versions"][0]
    assert version["selectableFields"] == [{"jsonPath": ".status.nodeName"}]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == [
        "Phase",
        "Host",
        "Flavor",
        "Image",
    ]


def test_generated_files_are_valid_yaml_with_short_names() -> None:
    shorts = set()
    for kind in crds.KINDS:
        doc = yaml.safe_load(crds.render(kind))
        shorts.update(doc["spec"]["names"]["shortNames"])
    assert shorts == {"fl", "img", "srv", "hv", "sg", "smig", "cquota"}


def test_conditions_are_a_map_keyed_by_type() -> None:
    server = next(k for k in crds.KINDS if k.kind == "Server")
    status = crds.crd(server)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"
    ]
    conds = status["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map"
    assert conds["x-kubernetes-list-map-keys"] == ["type"]


def test_migrations_are_selectable_by_source_and_target_host() -> None:
    smig = next(k for k in crds.KINDS if k.kind == "ServerMigration")
    version = crds.crd(smig)["spec"]["versions"][0]
    assert version["selectableFields"] == [
        {"jsonPath": ".status.sourceNode"},
        {"jsonPath": ".status.targetNode"},
    ]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:5] == ["Server", "Phase", "Source", "Target", "Progress"]


def test_durations() -> None:
    assert resources.parse_duration("150s") == 150.0
    assert resources.parse_duration("2m") == 120.0
    assert resources.parse_duration("500ms") == 0.5
    assert resources.parse_duration("0s") == 0.0
    with pytest.raises(ValueError):
        resources.parse_duration("soon")


def test_timestamps_round_trip_as_kubernetes_writes_them() -> None:
    stamp = common.timestamp()
    assert stamp.endswith("Z") and "+" not in stamp
    parsed = common.parse_time(stamp)
    assert parsed is not None and parsed.tzinfo is not None
    assert abs((parsed - common.now()).total_seconds()) < 5
    assert common.parse_time(None) is None and common.parse_time("") is None
