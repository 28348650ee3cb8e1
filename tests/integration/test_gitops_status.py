"""GitOps tools see kubenova's resources right (issue 12, item 5): kstatus itself —
``sigs.k8s.io/cli-utils/pkg/kstatus``, what Flux and Argo CD judge health with, built from the
Go module proxy (``hack/tools/kstatus``) — run on the objects the API server returns over their
lifecycle, with the controller and two agents on simulated hosts (libvirt's test driver).

A resource is InProgress until kubenova has acted on its current generation, Current once it
is what its spec declares (a stopped Server included), Failed when kubenova refuses or cannot
do what is declared; and applying the same manifests again after convergence changes nothing.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import kstatus, stack
from kubenova_devenv.kstatus import CURRENT, FAILED, IN_PROGRESS
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(240)

NS = "gitops"
ZONE = "gitops"  # this module's hosts only: other modules' hosts may still look up a while
HOSTS = ("gx-a", "gx-b")
FLAVOR = "gx.small"
IMAGE = "gx-image"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def bed(api: stack.Stack) -> Iterator[stack.Stack]:
    api.start_controller()
    for host in HOSTS:
        api.start_sim_agent(host, cpus=4, memory_mib=4096)
    api.kubectl("create", "namespace", NS, check=False)
    docs = [
        {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Flavor",
            "metadata": {"name": FLAVOR},
            "spec": {"vcpus": 1, "memoryMiB": 256, "diskGiB": 1},
        },
        api.image_manifest(IMAGE, architecture="i686"),  # what the test driver runs
    ]
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    yield api
    api.kubectl("delete", "smig", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    api.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    for host in HOSTS:
        api.agents.pop(host).stop()
        api.kubectl("delete", "hv", host, "--wait=false", check=False)
    assert api.controller is not None
    api.controller.stop()


def _json(out: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(out)
    return obj


def create(api: stack.Stack, doc: dict[str, Any]) -> dict[str, Any]:
    """Create ``doc``; the object exactly as the API server stored it (before any controller
    could have written to it)."""
    return _json(api.kubectl("create", "-f", "-", "-o", "json", stdin=json.dumps(doc)).stdout)


def patch(api: stack.Stack, kind: str, name: str, spec: dict[str, Any], ns: str = NS) -> dict:
    """Patch the spec; the object as the patch left it (a new generation nobody acted on)."""
    args = ["patch", kind, name, "--type", "merge", "-p", json.dumps({"spec": spec}), "-o", "json"]
    if ns:
        args += ["-n", ns]
    return _json(api.kubectl(*args).stdout)


def server(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"flavorRef": FLAVOR, "imageRef": IMAGE, "availabilityZone": ZONE, **spec},
    }


def becomes(
    api: stack.Stack, kind: str, name: str, want: str, ns: str = NS, timeout: float = 60
) -> dict[str, Any]:
    """Wait until kstatus says ``want`` of the object; returns kstatus's result with the
    object under ``object``."""

    def check() -> dict[str, Any] | None:
        obj = api.get(kind, name, ns or None)
        if obj is None:
            return None
        result = kstatus.compute(obj)
        return {**result, "object": obj} if result["status"] == want else None

    found: dict[str, Any] = eventually(check, timeout, step=0.5, what=f"{kind} {name} {want}")
    return found


def test_hypervisors_are_current_once_the_controller_acted_on_their_spec(bed: stack.Stack) -> None:
    for host in HOSTS:
        up = becomes(bed, "hv", host, CURRENT, ns="")
        assert condition(up["object"], "Up")["status"] == "True"
        # An admin's edit: InProgress until the controller has seen this generation.
        edited = patch(bed, "hv", host, {"availabilityZone": ZONE}, ns="")
        assert edited["metadata"]["generation"] > edited["status"]["observedGeneration"]
        assert kstatus.status(edited) == IN_PROGRESS
        done = becomes(bed, "hv", host, CURRENT, ns="")
        assert (
            done["object"]["status"]["observedGeneration"]
            == done["object"]["metadata"]["generation"]
        )


def test_a_server_over_its_lifecycle(bed: stack.Stack) -> None:
    created = create(bed, server("life"))
    # Nothing happened yet: not Current (kstatus calls an object without status Current).
    assert created["status"]["observedGeneration"] == 0
    assert kstatus.status(created) == IN_PROGRESS

    active = becomes(bed, "srv", "life", CURRENT)["object"]
    assert active["status"]["phase"] == "ACTIVE"
    assert condition(active, "Ready")["status"] == "True"

    stopping = patch(bed, "srv", "life", {"powerState": "Stopped"})
    assert kstatus.status(stopping) == IN_PROGRESS
    stopped = becomes(bed, "srv", "life", CURRENT)["object"]
    assert stopped["status"]["phase"] == "SHUTOFF"
    ready = condition(stopped, "Ready")
    assert ready["status"] == "True" and "as declared" in ready["message"], ready

    # Pausing a stopped server is refused: Failed, saying why.
    patch(bed, "srv", "life", {"powerState": "Paused"})
    refused = becomes(bed, "srv", "life", FAILED)
    assert "cannot pause" in refused["message"], refused
    stalled = condition(refused["object"], "Stalled")
    assert stalled["reason"] == "ActionNotAllowed", stalled
    assert refused["object"]["status"]["phase"] == "SHUTOFF"

    # Declared Running again: it runs, and is Current again.
    patch(bed, "srv", "life", {"powerState": "Running"})
    again = becomes(bed, "srv", "life", CURRENT)["object"]
    assert again["status"]["phase"] == "ACTIVE"
    assert condition(again, "Stalled")["status"] == "False"


def test_what_kubenova_cannot_do_is_failed_with_the_reason(bed: stack.Stack) -> None:
    # No host can take it (a host that does not exist).
    create(bed, server("nowhere", hostName="gx-nowhere"))
    unschedulable = becomes(bed, "srv", "nowhere", FAILED)
    assert "HostNameFilter" in unschedulable["message"], unschedulable
    assert condition(unschedulable["object"], "Stalled")["reason"] == "Unschedulable"
    # An image whose bits are not the ones declared.
    bad = bed.image_manifest("gx-bad-image", architecture="i686", kernel_sha="0" * 64)
    bed.kubectl("apply", "-f", "-", stdin=json.dumps(bad))
    create(bed, server("bad-image", imageRef="gx-bad-image"))
    invalid = becomes(bed, "srv", "bad-image", FAILED)
    assert condition(invalid["object"], "Stalled")["reason"] == "ImageChecksumMismatch", invalid
    assert invalid["object"]["status"]["phase"] == "ERROR"
    bed.kubectl("delete", "srv", "nowhere", "bad-image", "-n", NS, "--timeout=60s")
    bed.kubectl("delete", "image", "gx-bad-image", "--wait=false")


def test_a_server_migration_in_progress_then_failed(bed: stack.Stack) -> None:
    """The test driver cannot migrate (its target refuses): a migration that runs, then fails.
    One that succeeds is checked on real hosts (tests/e2e/test_migration.py)."""
    create(bed, server("mover"))
    source = becomes(bed, "srv", "mover", CURRENT)["object"]["status"]["nodeName"]
    target = next(h for h in HOSTS if h != source)
    smig = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "ServerMigration",
        "metadata": {"name": "move-mover", "namespace": NS},
        "spec": {"serverRef": "mover", "targetNode": target},
    }
    created = create(bed, smig)
    assert kstatus.status(created) == IN_PROGRESS
    seen: list[tuple[str, str]] = []

    def ended() -> dict[str, Any] | None:
        obj = bed.get("smig", "move-mover", NS)
        assert obj is not None
        phase = (obj.get("status") or {}).get("phase", "")
        result = kstatus.compute(obj)
        seen.append((phase, result["status"]))
        return {**result, "object": obj} if phase in ("Succeeded", "Failed") else None

    failed = eventually(ended, 60, step=0.2, what="the migration to end")
    assert failed["object"]["status"]["phase"] == "Failed"
    assert failed["status"] == FAILED, failed
    assert "cannot migrate" in failed["message"], failed
    # While it ran (whatever phases were caught), it was InProgress, never Current or Failed.
    running = [(p, s) for p, s in seen if p not in ("Succeeded", "Failed")]
    assert all(s == IN_PROGRESS for _, s in running), seen
    # The Server stays where it was, and Current.
    assert becomes(bed, "srv", "mover", CURRENT)["object"]["status"]["nodeName"] == source


def test_the_examples_applied_again_after_convergence_change_nothing(bed: stack.Stack) -> None:
    """``examples/`` (in this bed's namespace and zone, with the bed's image): once the Server
    runs, ``kubectl diff`` of the same manifests is empty and ``kubectl apply`` changes
    nothing — status written by kubenova is never something a re-apply would undo."""
    docs = [
        d
        for f in sorted(EXAMPLES.glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d is not None
    ]
    for doc in docs:
        if doc["kind"] == "Server":
            doc["metadata"]["namespace"] = NS
            doc["spec"]["availabilityZone"] = ZONE
            doc["spec"]["imageRef"] = IMAGE
    text = yaml.safe_dump_all(docs)
    bed.kubectl("apply", "-f", "-", stdin=text)
    names = [(d["kind"].lower(), d["metadata"]["name"]) for d in docs]
    for kind, name in names:
        becomes(bed, kind, name, CURRENT, ns=NS if kind == "server" else "")
    diff = bed.kubectl("diff", "-f", "-", stdin=text, check=False)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout + diff.stderr
    again = bed.kubectl("apply", "-f", "-", stdin=text).stdout
    assert all(line.endswith(" unchanged") for line in again.splitlines()), again
