"""Generate the CustomResourceDefinitions in ``deploy/crds/`` from the pydantic models.

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: ``$ref`` inlined,
``Optional`` as ``nullable``, titles dropped, enums typed, and ``x-kubernetes-*`` extras kept.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any

import yaml
from pydantic import BaseModel

from kubenova_api import constants, networks, resources


@dataclasses.dataclass(frozen=True)
class Kind:
    """One custom resource kind and how ``kubectl`` shows it."""

    kind: str
    plural: str
    short: str
    namespaced: bool
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[dict[str, Any], ...] = ()
    selectable: tuple[str, ...] = ()
    spec_required: bool = True


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="Flavor",
        plural=constants.FLAVORS,
        short="fl",
        namespaced=False,
        spec=resources.FlavorSpec,
        status=resources.FlavorStatus,
        description="A server size (Nova flavor): vCPUs, memory and root disk. Immutable.",
        columns=(
            {"name": "vCPUs", "type": "integer", "jsonPath": ".spec.vcpus"},
            {"name": "RAM-MiB", "type": "integer", "jsonPath": ".spec.memoryMiB"},
            {"name": "Disk-GiB", "type": "integer", "jsonPath": ".spec.diskGiB"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    Kind(
        kind="Image",
        plural=constants.IMAGES,
        short="img",
        namespaced=False,
        spec=resources.ImageSpec,
        status=resources.ImageStatus,
        description="A bootable image (Glance image): a disk, or a UEC kernel + ramdisk.",
        columns=(
            {"name": "Arch", "type": "string", "jsonPath": ".spec.architecture"},
            {"name": "Min-Disk", "type": "integer", "jsonPath": ".spec.minDiskGiB"},
            {"name": "Min-RAM", "type": "integer", "jsonPath": ".spec.minMemoryMiB"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    Kind(
        kind="Server",
        plural=constants.SERVERS,
        short="srv",
        namespaced=True,
        spec=resources.ServerSpec,
        status=resources.ServerStatus,
        description="A virtual machine (Nova instance); its namespace is its project.",
        columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Host", "type": "string", "jsonPath": ".status.nodeName"},
            {"name": "Flavor", "type": "string", "jsonPath": ".spec.flavorRef"},
            {"name": "Image", "type": "string", "jsonPath": ".spec.imageRef"},
            {"name": "Address", "type": "string", "jsonPath": ".status.addresses[0].ip"},
            {"name": "Power", "type": "string", "jsonPath": ".status.powerState", "priority": 1},
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": ".status.conditions[?(@.type=='Ready')].reason",
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
        selectable=(".status.nodeName",),
    ),
    Kind(
        kind="ServerGroup",
        plural=constants.SERVERGROUPS,
        short="sg",
        namespaced=True,
        spec=resources.ServerGroupSpec,
        status=resources.ServerGroupStatus,
        description="Servers placed together or apart (Nova server group).",
        columns=(
            {"name": "Policy", "type": "string", "jsonPath": ".spec.policy"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    Kind(
        kind="ServerMigration",
        plural=constants.SERVERMIGRATIONS,
        short="smig",
        namespaced=True,
        spec=resources.ServerMigrationSpec,
        status=resources.ServerMigrationStatus,
        description="Move a Server to another host (Nova live migration, or cold migration of "
        "a stopped server). Deleting a running one cancels it.",
        columns=(
            {"name": "Server", "type": "string", "jsonPath": ".spec.serverRef"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Source", "type": "string", "jsonPath": ".status.sourceNode"},
            {"name": "Target", "type": "string", "jsonPath": ".status.targetNode"},
            {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent"},
            {
                "name": "Downtime-ms",
                "type": "integer",
                "jsonPath": ".status.progress.downtimeMs",
                "priority": 1,
            },
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
        selectable=(".status.sourceNode", ".status.targetNode"),
    ),
    Kind(
        kind="ComputeQuota",
        plural=constants.COMPUTEQUOTAS,
        short="cquota",
        namespaced=True,
        spec=resources.ComputeQuotaSpec,
        status=resources.ComputeQuotaStatus,
        description="Limits on the Servers of a namespace (Nova quotas): servers, vCPUs, memory.",
        columns=(
            {"name": "Servers", "type": "integer", "jsonPath": ".spec.servers"},
            {"name": "vCPUs", "type": "integer", "jsonPath": ".spec.vcpus"},
            {"name": "RAM-MiB", "type": "integer", "jsonPath": ".spec.memoryMiB"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
        spec_required=False,
    ),
    Kind(
        kind="Hypervisor",
        plural=constants.HYPERVISORS,
        short="hv",
        namespaced=False,
        spec=resources.HypervisorSpec,
        status=resources.HypervisorStatus,
        description="A compute host (Nova compute node): its capacity, CPU and heartbeat.",
        columns=(
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": ".status.conditions[?(@.type=='Ready')].status",
            },
            {
                "name": "Up",
                "type": "string",
                "jsonPath": ".status.conditions[?(@.type=='Up')].status",
            },
            {"name": "Disabled", "type": "boolean", "jsonPath": ".spec.disabled"},
            {"name": "Evacuate", "type": "boolean", "jsonPath": ".spec.evacuate", "priority": 1},
            {"name": "Zone", "type": "string", "jsonPath": ".spec.availabilityZone"},
            {"name": "vCPUs", "type": "integer", "jsonPath": ".status.total.vcpus"},
            {"name": "RAM-MiB", "type": "integer", "jsonPath": ".status.total.memoryMiB"},
            {"name": "VMs", "type": "integer", "jsonPath": ".status.runningVMs"},
            {"name": "CPU", "type": "string", "jsonPath": ".status.cpuInfo.model", "priority": 1},
            {"name": "Heartbeat", "type": "date", "jsonPath": ".status.lastHeartbeatTime"},
        ),
        spec_required=False,
    ),
)

KINDS += (
    Kind(
        kind="ProviderNetwork",
        plural=constants.PROVIDERNETWORKS,
        short="pnet",
        namespaced=False,
        spec=networks.ProviderNetworkSpec,
        status=networks.ProviderNetworkStatus,
        description="A network of the datacenter LAN that hosts carry (Neutron provider "
        "network): a physical network mapped to a bridge on each host, flat or VLAN.",
        columns=(
            {"name": "Physical", "type": "string", "jsonPath": ".spec.physicalNetwork"},
            {"name": "VLAN", "type": "integer", "jsonPath": ".spec.vlanID"},
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Gateway", "type": "string", "jsonPath": ".spec.gateway"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
    Kind(
        kind="Network",
        plural=constants.NETWORKS,
        short="net",
        namespaced=True,
        spec=networks.NetworkSpec,
        status=networks.NetworkStatus,
        description="A tenant's isolated network (a VXLAN overlay across the hosts that run "
        "its servers), with DHCP and optional egress through SNAT.",
        columns=(
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Gateway", "type": "string", "jsonPath": ".spec.gateway"},
            {"name": "Egress", "type": "boolean", "jsonPath": ".spec.egress"},
            {"name": "VNI", "type": "integer", "jsonPath": ".status.vni"},
            {"name": "Default", "type": "boolean", "jsonPath": ".spec.default", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ),
    ),
)

_DROP = {"title", "$defs", "discriminator"}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """A Kubernetes structural OpenAPI v3 schema of ``model``."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    converted: dict[str, Any] = _convert(raw, defs)
    return converted


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        # Keys beside $ref (description, validations) override the definition's.
        extra_rules = node.pop("x-kubernetes-validations", [])
        target.update(node)
        if extra_rules:
            target["x-kubernetes-validations"] = (
                target.get("x-kubernetes-validations", []) + extra_rules
            )
        node = target
    options = node.get("anyOf")
    if options is not None:
        non_null = [o for o in options if o.get("type") != "null"]
        node.pop("anyOf")
        if len(non_null) == 1:
            merged = _convert(non_null[0], defs)
            outer_rules = node.pop("x-kubernetes-validations", [])
            merged.update({k: v for k, v in node.items() if k not in ("default",)})
            if outer_rules:
                merged["x-kubernetes-validations"] = (
                    merged.get("x-kubernetes-validations", []) + outer_rules
                )
            # Optional fields are simply not required: an explicit null is pruned by the
            # API server rather than stored, so CEL ``has()`` checks stay exact.
            node = merged
        else:
            raise ValueError(f"unions other than Optional are not structural: {options}")
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("format") == "date-time":
        node["type"] = "string"
    if node.get("default", 0) is None:
        node.pop("default")
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {k: _convert(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _convert(value, defs)
        else:
            out[key] = value
    if out.get("type") == "array" and _is_conditions(out):
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = ["type"]
    return out


def _is_conditions(schema: dict[str, Any]) -> bool:
    props = schema.get("items", {}).get("properties", {})
    return {"type", "status", "reason"} <= set(props)


def _unobserved_until_written(status: dict[str, Any]) -> None:
    """A kind kubenova converges reads ``status.observedGeneration: 0`` until kubenova wrote
    one: the API server fills it in (a structural default, also for a status not written yet),
    so an object just created is not taken for one that is done. kstatus (what Flux and Argo
    CD judge health with) skips the generation check when the field is absent, and calls an
    object without status or conditions Current; with 0 it says InProgress until kubenova has
    acted on the generation at hand."""
    status["default"] = {}
    status["properties"]["observedGeneration"]["default"] = 0


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural(kind.spec)
    spec_schema.setdefault("description", kind.spec.__doc__ or "")
    status_schema = structural(kind.status)
    status_schema["description"] = "Observed state, written by kubenova (never by users)."
    if "observedGeneration" in kind.status.model_fields:
        _unobserved_until_written(status_schema)
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "compute.kubenova.io/v1alpha1"},
            "kind": {"type": "string", "description": kind.kind},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if kind.spec_required:
        root["required"] = ["spec"]
    version: dict[str, Any] = {
        "name": constants.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
        "subresources": {"status": {}},
        "additionalPrinterColumns": list(kind.columns),
    }
    if kind.selectable:
        version["selectableFields"] = [{"jsonPath": p} for p in kind.selectable]
    singular = kind.kind.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        # The label finds every kubenova CRD (`kubectl delete crd -l ...` after an uninstall).
        "metadata": {
            "name": f"{kind.plural}.{constants.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubenova"},
        },
        "spec": {
            "group": constants.GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": singular,
                "shortNames": [kind.short],
                "categories": ["kubenova"],
            },
            "versions": [version],
        },
    }


def render(kind: Kind) -> str:
    """The YAML text of one CRD, as committed under ``deploy/crds/``."""
    header = "# Generated by `kubenova crds` from kubenova_api.resources; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def file_name(kind: Kind) -> str:
    return f"{constants.GROUP}_{kind.plural}.yaml"


def write_all(directory: pathlib.Path) -> list[pathlib.Path]:
    """Write every CRD into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / file_name(kind)
        path.write_text(render(kind))
        written.append(path)
    return written
