"""Each agent can touch only its own node, and the API server (not the agent) enforces it.

Agents authenticate with ServiceAccount tokens that name their node (bound to the Node object
here, to the agent's pod in a cluster); the admission policies of ``deploy/policies`` compare
that name with every write. Here one host's real credentials try each forbidden write on
another host's objects — a forged migration report, a rewritten ``nodeName``, another host's
Hypervisor, another host's console answer — and the API server refuses each, while the same
kind of write on the host's own objects goes through."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from kubenova_api import constants
from kubenova_devenv import controlplane, stack
from tests.conftest import UNHELD

pytestmark = pytest.mark.timeout(180)

NS = "identity"
API = constants.API_VERSION
A, B, C = "ident-a", "ident-b", "ident-c"


@pytest.fixture(scope="module")
def bed(api: stack.Stack) -> stack.Stack:
    api.kubectl("create", "namespace", NS, check=False)
    for name in ("on-a", "on-b"):
        _admin_apply(
            api,
            {
                "apiVersion": API,
                "kind": "Server",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"flavorRef": "m1.tiny", "imageRef": "cirros"},
            },
        )
    _status(api, "server", "on-a", {"nodeName": A, "phase": "BUILD"})
    _status(api, "server", "on-b", {"nodeName": B, "phase": "BUILD"})
    _admin_apply(
        api,
        {
            "apiVersion": API,
            "kind": "ServerMigration",
            "metadata": {"name": "a-to-b", "namespace": NS},
            "spec": {"serverRef": "on-a", "targetNode": B},
        },
    )
    _status(
        api,
        "servermigration",
        "a-to-b",
        {"phase": "Preparing", "sourceNode": A, "targetNode": B, "live": True},
    )
    return api


def _admin_apply(api: stack.Stack, body: dict[str, Any]) -> None:
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


def _status(api: stack.Stack, kind: str, name: str, status: dict[str, Any]) -> None:
    api.kubectl(
        "patch", kind, name, "-n", NS, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def _as(bed: stack.Stack, host: str, *args: str, stdin: str | None = None) -> tuple[bool, str]:
    """kubectl with the credentials of ``host``'s agent: (allowed, error text)."""
    out = bed.kubectl(*args, check=False, stdin=stdin, kubeconfig=bed.agent_kubeconfig(host))
    return out.returncode == 0, out.stderr


def _patch_status(
    bed: stack.Stack, host: str, kind: str, name: str, status: dict[str, Any]
) -> tuple[bool, str]:
    return _as(
        bed, host, "patch", kind, name, "-n", NS, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def _refused(result: tuple[bool, str], why: str) -> None:
    allowed, err = result
    assert not allowed, f"the API server let it through (expected: {why})"
    assert why in err, err


def test_an_agent_writes_the_status_of_its_own_servers_only(bed: stack.Stack) -> None:
    assert _patch_status(bed, A, "server", "on-a", {"phase": "ACTIVE", "powerState": "Running"})[0]
    _refused(
        _patch_status(bed, B, "server", "on-a", {"phase": "ERROR"}),
        f"node agent of {B}: this Server is not bound to this node",
    )
    # Moving a guest to itself, or making another host destroy it: nodeName is not an agent's.
    _refused(
        _patch_status(bed, B, "server", "on-b", {"nodeName": A}),
        "nodeName and the controller's status fields are not the agent's to change",
    )
    _refused(
        _patch_status(bed, A, "server", "on-a", {"nodeName": B}),
        "nodeName and the controller's status fields are not the agent's to change",
    )
    _refused(
        _patch_status(
            bed, A, "server", "on-a",
            {"conditions": [{"type": "Scheduled", "status": "False", "reason": "Forged",
                             "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        ),
        "only the Ready, Converged, Reconciling and Stalled conditions are the agent's",
    )  # fmt: skip
    server = bed.get("server", "on-a", NS)
    assert server is not None and server["status"]["nodeName"] == A
    assert server["status"]["phase"] == "ACTIVE"


def test_an_agent_holds_finalizers_of_its_own_servers_and_never_edits_a_spec(
    bed: stack.Stack,
) -> None:
    finalizer = json.dumps({"metadata": {"finalizers": [constants.FINALIZER_DOMAIN]}})
    # Servers are born with it (deploy/admission/domain-finalizer.yaml); taken off, the agent
    # of its node may put it back (as it does for a Server made without it).
    bed.kubectl("patch", "server", "on-a", "-n", NS, "--type=merge", "-p", json.dumps(UNHELD))
    assert _as(bed, A, "patch", "server", "on-a", "-n", NS, "--type=merge", "-p", finalizer)[0]
    _refused(
        _as(bed, B, "patch", "server", "on-a", "-n", NS, "--type=merge",
            "-p", json.dumps({"metadata": {"finalizers": None}})),
        "this Server is not bound to this node",
    )  # fmt: skip
    _refused(
        _as(bed, A, "patch", "server", "on-a", "-n", NS, "--type=merge",
            "-p", json.dumps({"spec": {"powerState": "Stopped"}})),
        "never its spec",
    )  # fmt: skip
    bed.kubectl("patch", "server", "on-a", "-n", NS, "--type=merge", "-p", json.dumps(UNHELD))


def test_an_agent_registers_and_reports_only_its_own_hypervisor(bed: stack.Stack) -> None:
    def hypervisor(name: str) -> str:
        return yaml.safe_dump({"apiVersion": API, "kind": "Hypervisor", "metadata": {"name": name}})

    assert _as(bed, A, "create", "-f", "-", stdin=hypervisor(A))[0]
    _refused(_as(bed, A, "create", "-f", "-", stdin=hypervisor(B)), "not this node's Hypervisor")
    bed.kubectl("create", "-f", "-", stdin=hypervisor(B))
    report = json.dumps({"status": {"runningVMs": 3}})
    args = ("--subresource=status", "--type=merge", "-p", report)
    assert _as(bed, A, "patch", "hypervisor", A, *args)[0]
    _refused(_as(bed, A, "patch", "hypervisor", B, *args), "not this node's Hypervisor")
    bed.kubectl("delete", "hypervisor", A, B, "--wait=false")


def test_an_agent_renews_only_its_own_heartbeat_lease(bed: stack.Stack) -> None:
    def lease(name: str, node: str) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": constants.HEARTBEAT_NAMESPACE,
                    "labels": {constants.HEARTBEAT_LEASE_LABEL: node},
                },
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40},
            }
        )

    own, other = constants.heartbeat_lease(A), constants.heartbeat_lease(B)
    assert _as(bed, A, "create", "-f", "-", stdin=lease(own, A))[0]
    # Keeping another host alive (or its Lease's label naming another host) is refused.
    _refused(_as(bed, A, "create", "-f", "-", stdin=lease(other, B)), "only this node's")
    _refused(_as(bed, A, "create", "-f", "-", stdin=lease(other, A)), "only this node's")
    _refused(_as(bed, A, "replace", "-f", "-", stdin=lease(own, B)), "carries the label")
    # Nor the controller's leader-election Lease in the same namespace.
    _refused(
        _as(bed, A, "create", "-f", "-", stdin=lease("kubenova-controller", A)), "only this node's"
    )
    bed.kubectl("delete", "lease", own, "-n", constants.HEARTBEAT_NAMESPACE, "--wait=false")


def test_each_side_of_a_migration_writes_only_its_own_report(bed: stack.Stack) -> None:
    # The target reports its checks; the source its own part and the progress.
    assert _patch_status(bed, B, "smig", "a-to-b", {"target": {"checked": True}})[0]
    assert _patch_status(
        bed, A, "smig", "a-to-b", {"source": {"arch": "x86_64"}, "progress": {"percent": 10}}
    )[0]
    # A target forging the source's "migration succeeded" (how a host would take a guest).
    _refused(
        _patch_status(
            bed, B, "smig", "a-to-b", {"source": {"started": True, "result": "Succeeded"}}
        ),
        "the target writes only status.target",
    )
    _refused(
        _patch_status(bed, A, "smig", "a-to-b", {"target": {"arrived": True}}),
        "the source writes only status.source and status.progress",
    )
    _refused(
        _patch_status(bed, B, "smig", "a-to-b", {"phase": "Succeeded"}),
        "the target writes only status.target",
    )
    _refused(
        _patch_status(bed, A, "smig", "a-to-b", {"targetNode": C}),
        "the source writes only status.source and status.progress",
    )
    # A host that is neither side cannot write anything of it.
    _refused(
        _patch_status(bed, C, "smig", "a-to-b", {"target": {"arrived": True}}),
        "this node is neither source nor target",
    )
    smig = bed.get("smig", "a-to-b", NS)
    assert smig is not None
    st = smig["status"]
    assert (st["phase"], st["sourceNode"], st["targetNode"]) == ("Preparing", A, B)
    assert st["target"]["checked"] and not st["target"].get("arrived")
    assert not st["source"].get("started") and st["progress"]["percent"] == 10


def test_an_agent_answers_console_requests_of_its_own_node_only(bed: stack.Stack) -> None:
    server = bed.get("server", "on-a", NS)
    assert server is not None

    def console(name: str, node: str, owner: str = "on-a") -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": {constants.NODE_LABEL: node},
                    "ownerReferences": [
                        {"apiVersion": API, "kind": "Server", "name": owner,
                         "uid": server["metadata"]["uid"]}
                    ],
                },
                "data": {"console": f"written by {node}"},
            }
        )  # fmt: skip

    mine = constants.console_configmap("on-a", A)
    assert _as(bed, A, "create", "-f", "-", stdin=console(mine, A))[0]
    # Another host overwriting it, or passing its own answer off as the bound host's.
    allowed, err = _as(bed, B, "replace", "-f", "-", stdin=console(mine, B))
    assert not allowed and f"node agent of {B}" in err, err
    forged = constants.console_configmap("on-b", A)
    _refused(
        _as(bed, B, "create", "-f", "-", stdin=console(forged, A, owner="on-b")),
        "only a Server's console answer (<server>-console-<this node>, owned by it)",
    )
    # Any other ConfigMap (kube-system's, say) is out of an agent's reach.
    _refused(
        _as(bed, A, "create", "configmap", "anything", "-n", NS), "only a Server's console answer"
    )
    cm = bed.get("configmap", mine, NS)
    assert cm is not None and cm["data"]["console"] == f"written by {A}"


def test_agent_credentials_that_name_no_node_are_refused(
    bed: stack.Stack, tmp_path: pathlib.Path
) -> None:
    ns, sa = stack.AGENT_SERVICE_ACCOUNT
    token = bed.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    kc = tmp_path / "kubeconfig-nameless"
    controlplane.write_kubeconfig(kc, bed.cp.url, bed.cp.workdir / "pki" / "ca.crt", "x", token)
    out = bed.kubectl(
        "patch", "server", "on-a", "-n", NS, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "ERROR"}}), check=False, kubeconfig=kc,
    )  # fmt: skip
    assert out.returncode != 0 and "these credentials name no node" in out.stderr, out.stderr


def test_rbac_still_keeps_agents_from_users_work(bed: stack.Stack) -> None:
    flavor = {"apiVersion": API, "kind": "Flavor", "metadata": {"name": "by-agent"},
              "spec": {"vcpus": 1, "memoryMiB": 128}}  # fmt: skip
    allowed, err = _as(bed, A, "create", "-f", "-", stdin=yaml.safe_dump(flavor))
    assert not allowed and "forbidden" in err
    allowed, err = _as(bed, A, "get", "secrets", "-A")
    assert not allowed and "forbidden" in err
