"""The OpenStack API facade as strict clients see it, on simulated hosts (libvirt's test driver).

Every answer is read by tempest's compute service clients (``tempest.lib``, the OpenStack QA
project's), which check it against Nova's own response schema for the requested microversion:
a key the Compute API reference does not list, or one it requires that is missing, a wrong
type or status code, or a microversion header that does not echo the request, fails the call.
Also: the task state stays set until the agent has really done an action, and every request
acts as its caller (Kubernetes RBAC decides, a project is a namespace).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import openstackapi, stack
from tests.conftest import eventually

tempest_auth = pytest.importorskip("tempest.lib.auth")  # a dev dependency: always there
from tempest.lib import exceptions as tempest_exc  # noqa: E402
from tempest.lib.services.compute import (  # noqa: E402
    availability_zone_client,
    base_compute_client,
    flavors_client,
    hypervisor_client,
    keypairs_client,
    limits_client,
    migrations_client,
    server_groups_client,
    servers_client,
    services_client,
    versions_client,
)

pytestmark = [
    pytest.mark.timeout(300),
    # tempest and the oslo libraries warn about their own internals
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

ADMIN = openstackapi.OpenStackUser("os-admin", "admin-pw", "os-alice")
MEMBER = openstackapi.OpenStackUser("os-member", "member-pw", "bob")  # has a token
HOSTS = ("os-sim-a", "os-sim-b")
PROJECT = "os-conformance"
OTHER = "os-elsewhere"
QUOTA = "os-quota"
#: A microversion of each response shape tempest knows up to the facade's maximum.
MICROVERSIONS = (
    None, "2.3", "2.6", "2.8", "2.9", "2.16", "2.19", "2.26", "2.45", "2.47", "2.48", "2.51",
    "2.53", "2.54", "2.55", "2.57", "2.58", "2.61", "2.62", "2.63", "2.64", "2.70", "2.71",
    "2.73", "2.75", "2.79", "2.80", "2.84", "2.88",
)  # fmt: skip


class Cloud:
    def __init__(self, bed: stack.Stack, url: str) -> None:
        self.bed, self.url = bed, url

    def clients(self, user: openstackapi.OpenStackUser, project: str) -> Clients:
        creds = tempest_auth.KeystoneV3Credentials(
            username=user.name,
            password=user.password,
            project_name=project,
            user_domain_name="Default",
            project_domain_name="Default",
        )
        provider = tempest_auth.KeystoneV3AuthProvider(creds, f"{self.url}/identity/v3")
        return Clients(provider)


class Clients:
    """tempest's compute clients over one login."""

    def __init__(self, provider: Any) -> None:
        kw = {"auth_provider": provider, "service": "compute", "region": "RegionOne"}
        # kubenova sets no guest password: as Nova with enable_instance_password = False,
        # create and rescue answer no adminPass.
        self.servers = servers_client.ServersClient(**kw, enable_instance_password=False)
        self.flavors = flavors_client.FlavorsClient(**kw)
        self.hypervisors = hypervisor_client.HypervisorClient(**kw)
        self.services = services_client.ServicesClient(**kw)
        self.zones = availability_zone_client.AvailabilityZoneClient(**kw)
        self.groups = server_groups_client.ServerGroupsClient(**kw)
        self.keypairs = keypairs_client.KeyPairsClient(**kw)
        self.migrations = migrations_client.MigrationsClient(**kw)
        self.limits = limits_client.LimitsClient(**kw)
        self.versions = versions_client.VersionsClient(**kw)


@contextlib.contextmanager
def microversion(version: str | None) -> Iterator[None]:
    """Requests carry this microversion; answers are checked against its schemas."""
    base_compute_client.COMPUTE_MICROVERSION = version
    try:
        yield
    finally:
        base_compute_client.COMPUTE_MICROVERSION = None


@pytest.fixture(scope="module")
def cloud(api: stack.Stack) -> Iterator[Cloud]:
    """The controller, two simulated hosts, a flavor and an image, and the facade."""
    api.start_controller()
    for name in HOSTS:
        api.start_sim_agent(name, cpus=8, memory_mib=4096)
    for ns in (PROJECT, OTHER):
        api.kubectl("create", "namespace", ns, check=False)
    flavor = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Flavor",
        "metadata": {"name": "os.small", "labels": {"compute.kubenova.io/flavor-id": "1"},
                     "annotations": {"compute.kubenova.io/flavor-id": "1"}},
        "spec": {"vcpus": 1, "memoryMiB": 128, "diskGiB": 1},
    }  # fmt: skip
    bigger = {**flavor, "metadata": {"name": "os.bigger"}, "spec": {**flavor["spec"], "diskGiB": 2}}
    image = api.image_manifest("os-sim-image", architecture="i686")
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([flavor, bigger, image]))
    openstackapi.install(api, [ADMIN, MEMBER])
    openstackapi.grant(api, "kubenova-openstack-admin", user=ADMIN.kubernetes_user)
    openstackapi.grant(
        api, "kubenova-openstack-member", user=MEMBER.kubernetes_user, namespace=PROJECT
    )
    eventually(lambda: all(api.get("hypervisor", h) for h in HOSTS), 60, what="both Hypervisors")
    proc, url = openstackapi.start(api, name="openstack-api-conformance")
    try:
        yield Cloud(api, url)
    finally:
        proc.stop()
        api.kubectl("delete", "servers", "--all", "-n", PROJECT, "--timeout=60s", check=False,
                    timeout=90)  # fmt: skip
        for name in HOSTS:
            api.agents.pop(name).stop()
        if api.controller is not None:
            api.controller.stop()
            api.controller = None
        # The session's bed is shared: leave no host, flavor or image behind for the next
        # module's scheduler to count.
        api.kubectl("delete", "hypervisor", *HOSTS, "--ignore-not-found", "--timeout=60s",
                    check=False, timeout=90)  # fmt: skip
        api.kubectl("delete", "flavor", "os.small", "os.bigger", "--ignore-not-found",
                    check=False)  # fmt: skip
        api.kubectl("delete", "image", "os-sim-image", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def admin(cloud: Cloud) -> Clients:
    return cloud.clients(ADMIN, PROJECT)


def image_id(cloud: Cloud) -> str:
    got = cloud.bed.get("image", "os-sim-image")
    assert got is not None
    return str(got["metadata"]["uid"])


def wait_server(c: Clients, uid: str, status: str, timeout: float = 60) -> dict[str, Any]:
    """``GET /servers/{id}`` until ``status`` with no task left."""

    def reached() -> dict[str, Any] | None:
        shown = c.servers.show_server(uid)["server"]
        done = shown["status"] == status and shown["OS-EXT-STS:task_state"] is None
        return dict(shown) if done else None

    return dict(eventually(reached, timeout, step=0.3, what=f"{uid} {status}"))


def boot(cloud: Cloud, c: Clients, name: str, **extra: Any) -> str:
    made = c.servers.create_server(name=name, imageRef=image_id(cloud), flavorRef="1", **extra)
    uid = str(made["server"]["id"])
    wait_server(c, uid, "ACTIVE")
    return uid


# ----------------------------------------------------------------------------- conformance


def test_every_answer_matches_novas_schema_at_each_microversion(
    cloud: Cloud, admin: Clients
) -> None:
    with microversion("2.1"):
        admin.keypairs.create_keypair(name="conformance")
    group = admin.groups.create_server_group(name="together", policies=["affinity"])
    uid = boot(cloud, admin, "conformance one", key_name="conformance",
               metadata={"role": "web"}, **{"os:scheduler_hints": {}})  # fmt: skip
    stopped = boot(cloud, admin, "conformance two")
    admin.servers.stop_server(stopped)
    wait_server(admin, stopped, "SHUTOFF")
    admin.versions.list_versions()
    for version in MICROVERSIONS:
        with microversion(version):
            admin.versions.get_version_by_url(f"{cloud.url}/v2.1")
            listed = admin.servers.list_servers()["servers"]
            assert {s["id"] for s in listed} >= {uid, stopped}
            detail = admin.servers.list_servers(detail=True)["servers"]
            assert {s["id"]: s["status"] for s in detail if s["id"] in (uid, stopped)} == {
                uid: "ACTIVE", stopped: "SHUTOFF",
            }  # fmt: skip
            shown = admin.servers.show_server(uid)["server"]
            assert shown["name"] == "conformance one" and shown["key_name"] == "conformance"
            admin.servers.update_server(uid, name="conformance one")
            admin.servers.list_server_metadata(uid)
            admin.servers.show_server_metadata_item(uid, "role")
            actions = admin.servers.list_instance_actions(uid)["instanceActions"]
            assert "create" in {a["action"] for a in actions}
            admin.servers.show_instance_action(uid, actions[0]["request_id"])
            flavors = admin.flavors.list_flavors(detail=True)["flavors"]
            assert "1" in {f["id"] for f in flavors}
            admin.flavors.list_flavors()
            admin.flavors.show_flavor("1")
            admin.flavors.list_flavor_extra_specs("1")
            if version != "2.88":  # tempest has no schema of 2.88's hypervisors: see below
                hvs = admin.hypervisors.list_hypervisors()["hypervisors"]
                admin.hypervisors.list_hypervisors(detail=True)
                admin.hypervisors.show_hypervisor(hvs[0]["id"])  # an int before 2.53, then a UUID
            admin.services.list_services()
            admin.zones.list_availability_zones()
            admin.zones.list_availability_zones(detail=True)
            admin.groups.list_server_groups()
            admin.groups.show_server_group(group["server_group"]["id"])
            admin.keypairs.list_keypairs()
            admin.keypairs.show_keypair("conformance")
            admin.migrations.list_migrations()
            admin.limits.show_limits()
    # 2.88's hypervisor, as the API reference lists it (no resource figures, an uptime).
    token = admin.servers.auth_provider.get_token()
    status, body = _get(f"{cloud.url}/v2.1/os-hypervisors/detail", token, "2.88")
    assert status == 200 and {tuple(sorted(h)) for h in body["hypervisors"]} == {
        ("host_ip", "hypervisor_hostname", "hypervisor_type", "hypervisor_version", "id",
         "service", "state", "status", "uptime")
    }  # fmt: skip
    # Limits from a ResourceQuota that counts Servers (in a project of its own: with no
    # quota controller in this bed, the quota's admission would refuse creates there).
    cloud.bed.kubectl("create", "namespace", QUOTA, check=False)
    cloud.bed.kubectl("create", "quota", "servers", "-n", QUOTA,
                      "--hard=count/servers.compute.kubenova.io=7")  # fmt: skip
    with microversion("2.60"):
        limits = cloud.clients(ADMIN, QUOTA).limits.show_limits()["limits"]["absolute"]
    assert limits["maxTotalInstances"] == 7 and limits["totalInstancesUsed"] == 0, limits
    for server in (uid, stopped):
        admin.servers.delete_server(server)
    admin.groups.delete_server_group(group["server_group"]["id"])
    admin.keypairs.delete_keypair("conformance")


def test_flavors_and_actions_answer_as_nova_does(cloud: Cloud, admin: Clients) -> None:
    with microversion("2.55"):
        made = admin.flavors.create_flavor(name="conformance flavor", ram=64, vcpus=1, disk=1,
                                           id="77", description="made by tempest")  # fmt: skip
        assert made["flavor"]["id"] == "77"
        admin.flavors.set_flavor_extra_spec("77", **{"hw:cpu_policy": "shared"})
        assert admin.flavors.list_flavor_extra_specs("77")["extra_specs"] == {
            "hw:cpu_policy": "shared"
        }
        admin.flavors.delete_flavor("77")
    uid = boot(cloud, admin, "actions")
    with microversion("2.60"):
        steps = [
            (admin.servers.pause_server, "PAUSED"),
            (admin.servers.unpause_server, "ACTIVE"),
            (admin.servers.stop_server, "SHUTOFF"),
            (admin.servers.start_server, "ACTIVE"),
        ]
        for call, status in steps:
            call(uid)
            wait_server(admin, uid, status)
        admin.servers.reboot_server(uid, type="HARD")
        wait_server(admin, uid, "ACTIVE")
        # A state the action does not allow: 409 at once, as Nova answers.
        with pytest.raises(tempest_exc.Conflict):
            admin.servers.start_server(uid)
        admin.servers.delete_server(uid)


def test_rebuild_answers_as_nova_does_and_the_host_does_it(cloud: Cloud, admin: Clients) -> None:
    """``rebuild`` at each microversion that changes its answer: 202 with the server (Nova's
    schema) in REBUILD, then ACTIVE from the new image once the host's agent has rebuilt it,
    the status naming that image (what runs and the pinned bits); a paused server is 409."""
    other = cloud.bed.image_manifest("os-sim-image-2", architecture="i686", with_disk=False)
    cloud.bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other))
    made = cloud.bed.get("image", "os-sim-image-2")
    assert made is not None
    first, second = image_id(cloud), str(made["metadata"]["uid"])
    uid = boot(cloud, admin, "rebuild me")
    data = base64.b64encode(b"#!/bin/sh\necho rebuilt\n").decode()
    steps = (
        ("2.1", second, {}), ("2.19", first, {"description": "again"}),
        ("2.54", second, {}), ("2.57", first, {"user_data": data}), ("2.63", second, {}),
        ("2.71", first, {}), ("2.75", second, {"user_data": None}), ("2.88", first, {}),
    )  # fmt: skip
    for version, image, extra in steps:
        with microversion(version):
            answer = admin.servers.rebuild_server(
                uid, image, name=f"rebuilt at {version}", metadata={"at": version}, **extra
            )["server"]
        assert (answer["status"], answer["image"]["id"]) == ("REBUILD", image), answer
        assert answer["name"] == f"rebuilt at {version}"
        if "user_data" in extra:
            assert answer["user_data"] == extra["user_data"]
        shown = wait_server(admin, uid, "ACTIVE")
        assert shown["image"]["id"] == image and shown["metadata"] == {"at": version}
        name = "os-sim-image" if image == first else "os-sim-image-2"

        # The controller re-pins status.image after the rebuild, in its next pass.
        def repinned(want: str = name) -> dict[str, Any] | None:
            got: dict[str, Any] = k8s_server(cloud, uid)["status"]
            return got if got["image"]["name"] == want else None

        status = eventually(repinned, 10, what=f"status.image re-pinned to {name}")
        assert status["imageRef"] == name and status["image"]["name"] == name, status
    # Not in a state that allows it: 409 at once; an unknown image: 400.
    with pytest.raises(tempest_exc.BadRequest):
        admin.servers.rebuild_server(uid, "no-such-image")
    admin.servers.pause_server(uid)
    wait_server(admin, uid, "PAUSED")
    with pytest.raises(tempest_exc.Conflict):
        admin.servers.rebuild_server(uid, first)
    admin.servers.delete_server(uid)
    cloud.bed.kubectl("delete", "image", "os-sim-image-2", "--timeout=60s", check=False)


def test_task_state_stays_until_the_host_has_done_it(cloud: Cloud, admin: Clients) -> None:
    """After ``os-stop`` the answer says ACTIVE / powering-off for as long as the host's agent
    has not acted (here: held with SIGSTOP), and no answer says a task is done (None) while
    the Server's status still shows the guest running."""
    uid = boot(cloud, admin, "task state")
    node = k8s_server(cloud, uid)["status"]["nodeName"]
    agent = cloud.bed.agents[node].popen
    assert agent is not None
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        admin.servers.stop_server(uid)
        for _ in range(3):
            shown = admin.servers.show_server(uid)["server"]
            assert (shown["status"], shown["OS-EXT-STS:task_state"]) == ("ACTIVE", "powering-off")
            time.sleep(0.5)
    finally:
        os.kill(agent.pid, signal.SIGCONT)

    def off() -> bool:
        shown = admin.servers.show_server(uid)["server"]
        body = k8s_server(cloud, uid)
        pair = (shown["status"], shown["OS-EXT-STS:task_state"])
        if pair[1] is None:
            # no task left: the host has reported what the answer says
            assert (body.get("status") or {}).get("phase") == pair[0], (pair, body["status"])
        else:
            assert pair == ("ACTIVE", "powering-off"), pair
        return pair == ("SHUTOFF", None)

    eventually(off, 60, step=0.05, what="SHUTOFF with no task")
    admin.servers.delete_server(uid)


def k8s_server(cloud: Cloud, uid: str) -> dict[str, Any]:
    out = cloud.bed.kubectl("get", "servers", "-A", "-l", f"compute.kubenova.io/server-id={uid}",
                            "-o", "json")  # fmt: skip
    items = json.loads(out.stdout)["items"]
    assert len(items) == 1
    return dict(items[0])


# ----------------------------------------------------------------------------- as the caller


def _get(url: str, token: str, version: str = "2.1") -> tuple[int, Any]:
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": f"compute {version}"}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, json.loads(body or b"null")


def test_every_request_acts_as_its_caller(cloud: Cloud, admin: Clients) -> None:
    """A member of one namespace (RoleBinding) sees and changes only its servers; in another
    namespace RBAC answers 403, through the facade as through kubectl."""
    mine = boot(cloud, admin, "members")
    theirs_clients = cloud.clients(ADMIN, OTHER)
    theirs = boot(cloud, theirs_clients, "not for members")
    member = cloud.clients(MEMBER, PROJECT)
    assert mine in {s["id"] for s in member.servers.list_servers()["servers"]}
    assert theirs not in {s["id"] for s in member.servers.list_servers(detail=True)["servers"]}
    member.servers.stop_server(mine)  # a member may change its servers
    wait_server(member, mine, "SHUTOFF")
    with pytest.raises(tempest_exc.NotFound):
        member.servers.show_server(theirs)  # not in the member's project
    # The member's own Kubernetes token, passed through as the caller's: 403 from RBAC.
    token = cloud.bed.cp.token(MEMBER.kubernetes_user)
    status, body = _get(f"{cloud.url}/v2.1/{OTHER}/servers/detail", token)
    assert status == 403 and body["forbidden"]["code"] == 403, body
    status, body = _get(f"{cloud.url}/v2.1/{OTHER}/servers/{theirs}", token)
    assert status == 403, body
    status, body = _get(f"{cloud.url}/v2.1/{PROJECT}/servers", token)
    assert status == 200 and mine in {s["id"] for s in body["servers"]}
    # Hypervisors are for administrators (a cluster-scoped resource the member may not read).
    with pytest.raises(tempest_exc.Forbidden):
        member.hypervisors.list_hypervisors()
    # ... and the facade's own rights are no back door: the member cannot scope a token to
    # the other project at all.
    with pytest.raises(tempest_exc.Unauthorized):
        cloud.clients(MEMBER, OTHER).servers.list_servers()
    admin.servers.delete_server(mine)
    theirs_clients.servers.delete_server(theirs)
