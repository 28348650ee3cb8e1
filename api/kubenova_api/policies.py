"""Generate ``deploy/policies/agent-node.yaml``: the ValidatingAdmissionPolicies that keep each
node agent to its own node, enforced by the API server whatever the agent does.

RBAC alone cannot say "only the Servers bound to *your* node": every agent has the same
ClusterRole. The agent's credentials name its node instead — a ServiceAccount token bound to
the agent's pod (in a cluster) or to its Node object (the local test bed) carries the
``authentication.kubernetes.io/node-name`` extra — and these policies compare that name with
the object written:

* a Server's status only while it is bound to the agent's node, never its ``nodeName`` or the
  fields the controller owns (the agent's fields are ``SERVER_AGENT_FIELDS``);
* a Server itself (its finalizer) only while bound to the agent's node, spec unchanged;
* only its own Hypervisor, and only its own heartbeat Lease (``hypervisor-<node>``, labelled
  with the node);
* a ServerMigration's status only as its source (``source``, ``progress``) or its target
  (``target``), nothing else of it;
* ConfigMaps only as console answers of its own node: ``<server>-console-<node>``, owned by
  that Server, labelled with the node, and never one labelled with another node.

Agent credentials without a node are refused outright. Which fields are whose is read from the
models here, so a new status field is the controller's until it is listed as an agent's.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel

from kubenova_api import constants, resources

#: The agent's ServiceAccount in the local test bed; the Helm chart replaces it with its own.
AGENT_USER = "system:serviceaccount:kubenova-system:kubenova-agent"
NODE_EXTRA = "authentication.kubernetes.io/node-name"
#: The label a console ConfigMap carries: the node whose agent wrote it.
NODE_LABEL = constants.NODE_LABEL
FILE_NAME = "agent-node.yaml"

#: Fields of a Server's status its agent writes; the rest is the controller's.
SERVER_AGENT_FIELDS = frozenset(
    {
        "phase",
        "powerState",
        "domainName",
        "conditions",
        "observedGeneration",
        "launchedAt",
        "observedRebootRequestedAt",
        "observedRebuildRequestedAt",
        "imageRef",
        "restartCount",
        "diskRebuilt",  # after an evacuation: the new host says whether it rebuilt the disk
    }
)
#: Condition types of a Server its agent sets; the others (Scheduled, ...) are the controller's.
SERVER_AGENT_CONDITIONS = ("Ready", "Converged", "Reconciling", "Stalled")
#: Fields of a ServerMigration's status each side writes.
MIGRATION_SOURCE_FIELDS = frozenset({"source", "progress"})
MIGRATION_TARGET_FIELDS = frozenset({"target"})


def _unchanged(model: type[BaseModel], writable: frozenset[str]) -> str:
    """CEL: every status field of ``model`` outside ``writable`` is as it was."""
    unknown = writable - set(model.model_fields)
    if unknown:
        raise ValueError(f"{model.__name__} has no fields {sorted(unknown)}")
    fields = sorted(set(model.model_fields) - writable)
    return " && ".join(f"object.?status.?{f} == oldObject.?status.?{f}" for f in fields)


def _conditions_kept(types: tuple[str, ...]) -> str:
    theirs = " && ".join(f"c.type != '{t}'" for t in types)
    return (
        f"object.?status.?conditions.orValue([]).filter(c, {theirs}) == "
        f"oldObject.?status.?conditions.orValue([]).filter(c, {theirs})"
    )


def _rule(resources_: list[str], operations: list[str], group: str) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": ["*"],
        "resources": resources_,
        "operations": operations,
    }


def _validation(expression: str, message: str) -> dict[str, Any]:
    return {
        "expression": expression,
        # A CEL string in double quotes (the messages have apostrophes).
        "messageExpression": '"node agent of " + variables.node + ' + json.dumps(": " + message),
        "reason": "Forbidden",
    }


HAS_NODE = _validation(
    "variables.node != ''", "these credentials name no node (use a token bound to a pod or node)"
)


def _policy(
    name: str, rules: list[dict[str, Any]], validations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kubenova"}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": rules},
            "matchConditions": [
                {"name": "node-agent", "expression": f"request.userInfo.username == '{AGENT_USER}'"}
            ],
            "variables": [
                # Absent (not empty) on a request for the object itself.
                {"name": "subresource", "expression": "request.?subResource.orValue('')"},
                {
                    "name": "node",
                    "expression": (
                        f"'{NODE_EXTRA}' in request.userInfo.extra && "
                        f"size(request.userInfo.extra['{NODE_EXTRA}']) == 1 ? "
                        f"request.userInfo.extra['{NODE_EXTRA}'][0] : ''"
                    ),
                },
            ],
            "validations": [HAS_NODE, *validations],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kubenova"}},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def documents() -> list[dict[str, Any]]:
    g = constants.GROUP
    bound_here = "oldObject.?status.?nodeName.orValue('') == variables.node"
    servers = _policy(
        "kubenova-agent-servers",
        [_rule(["servers", "servers/status"], ["UPDATE"], g)],
        [
            _validation(bound_here, "this Server is not bound to this node"),
            _validation(
                "variables.subresource != 'status' || ("
                + _unchanged(resources.ServerStatus, SERVER_AGENT_FIELDS)
                + ")",
                "nodeName and the controller's status fields are not the agent's to change",
            ),
            _validation(
                "variables.subresource != 'status' || " + _conditions_kept(SERVER_AGENT_CONDITIONS),
                "only the Ready, Converged, Reconciling and Stalled conditions are the agent's",
            ),
            _validation(
                "variables.subresource == 'status' || (object.spec == oldObject.spec && "
                "object.metadata.?labels == oldObject.metadata.?labels && "
                "object.metadata.?annotations == oldObject.metadata.?annotations)",
                "an agent changes only the finalizers of a Server, never its spec",
            ),
        ],
    )
    hypervisors = _policy(
        "kubenova-agent-hypervisors",
        [_rule(["hypervisors", "hypervisors/status"], ["CREATE", "UPDATE"], g)],
        [_validation("object.metadata.name == variables.node", "not this node's Hypervisor")],
    )
    leases = _policy(
        "kubenova-agent-leases",
        [_rule(["leases"], ["CREATE", "UPDATE"], "coordination.k8s.io")],
        [
            _validation(
                f"object.metadata.name == '{constants.HEARTBEAT_LEASE_PREFIX}' + variables.node",
                f"only this node's heartbeat Lease ({constants.HEARTBEAT_LEASE_PREFIX}<node>)",
            ),
            _validation(
                f"object.metadata.?labels[?'{constants.HEARTBEAT_LEASE_LABEL}'] == "
                "optional.of(variables.node)",
                f"a heartbeat Lease carries the label {constants.HEARTBEAT_LEASE_LABEL}=<node>",
            ),
        ],
    )
    source = "variables.node == oldObject.?status.?sourceNode.orValue('')"
    target = "variables.node == oldObject.?status.?targetNode.orValue('')"
    migrations = _policy(
        "kubenova-agent-servermigrations",
        [_rule(["servermigrations", "servermigrations/status"], ["UPDATE"], g)],
        [
            _validation(
                "variables.subresource == 'status'", "a ServerMigration's spec is not the agent's"
            ),
            _validation(f"{source} || {target}", "this node is neither source nor target"),
            _validation(
                f"!({source}) || ("
                + _unchanged(resources.ServerMigrationStatus, MIGRATION_SOURCE_FIELDS)
                + ")",
                "the source writes only status.source and status.progress",
            ),
            _validation(
                f"!({target}) || ("
                + _unchanged(resources.ServerMigrationStatus, MIGRATION_TARGET_FIELDS)
                + ")",
                "the target writes only status.target",
            ),
        ],
    )
    owner = (
        "object.metadata.?ownerReferences.orValue([]).size() == 1 && "
        f"object.metadata.ownerReferences[0].apiVersion == '{constants.API_VERSION}' && "
        "object.metadata.ownerReferences[0].kind == 'Server' && "
        "object.metadata.name == "
        "object.metadata.ownerReferences[0].name + '-console-' + variables.node"
    )
    consoles = _policy(
        "kubenova-agent-consoles",
        [_rule(["configmaps"], ["CREATE", "UPDATE"], "")],
        [
            _validation(
                owner,
                "only a Server's console answer (<server>-console-<this node>, owned by it)",
            ),
            _validation(
                f"object.metadata.?labels[?'{NODE_LABEL}'] == optional.of(variables.node)",
                f"a console answer carries the label {NODE_LABEL}=<this node>",
            ),
            _validation(
                f"request.operation != 'UPDATE' || "
                f"oldObject.metadata.?labels[?'{NODE_LABEL}'] == optional.of(variables.node)",
                "this console answer is another node's",
            ),
        ],
    )
    return [*servers, *hypervisors, *leases, *migrations, *consoles]


def render() -> str:
    header = (
        "# Generated by `kubenova crds` from kubenova_api/policies.py: edit that file.\n"
        "# Each node agent writes only what belongs to its own node (see that module).\n"
    )
    return header + yaml.safe_dump_all(documents(), sort_keys=False, width=100)
