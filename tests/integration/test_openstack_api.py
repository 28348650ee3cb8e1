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
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import openstackapi, stack
from kubenova_openstack import names
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
    quotas_client,
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
G = "compute.kubenova.io/v1alpha1"
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
        self.quotas = quotas_client.QuotasClient(**kw)
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
               metadata={"role": "web"})  # fmt: skip
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
    status, body = _send(f"{cloud.url}/v2.1/os-hypervisors/detail", token, version="2.88")
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


def _send(
    url: str, token: str, method: str = "GET", body: Any = None, version: str = "2.1"
) -> tuple[int, Any]:
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": f"compute {version}"}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        exc.close()
        try:
            return exc.code, json.loads(text or b"null")
        except ValueError:
            return exc.code, text.decode()  # Glance's faults are text


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
    status, body = _send(f"{cloud.url}/v2.1/{OTHER}/servers/detail", token)
    assert status == 403 and body["forbidden"]["code"] == 403, body
    status, body = _send(f"{cloud.url}/v2.1/{OTHER}/servers/{theirs}", token)
    assert status == 403, body
    status, body = _send(f"{cloud.url}/v2.1/{PROJECT}/servers", token)
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


# ----------------------------------------------------------------------------- request bodies


def _login(cloud: Cloud, user: openstackapi.OpenStackUser, project: str) -> str:
    """A Keystone v3 password token of the facade's, scoped to ``project``."""
    return openstackapi.login(cloud.url, user, project)


def _server_names(cloud: Cloud) -> set[str]:
    out = cloud.bed.kubectl("get", "servers", "-n", PROJECT, "-o", "name")
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("version", "server", "hints", "words"),
    [
        ("2.1", {"min_count": "abc"}, None, "min_count"),
        ("2.1", {"max_count": 0}, None, "max_count"),
        ("2.1", {"min_count": 2, "max_count": 1}, None, "min_count must be <= max_count"),
        ("2.1", {"personality": "x"}, None, "personality"),
        ("2.1", {"networks": "bogus"}, None, "networks"),
        ("2.1", {"networks": [{"uuid": 5}]}, None, "networks.0.uuid"),
        ("2.1", {"availability_zone": 5}, None, "availability_zone"),
        ("2.1", {"security_groups": 5}, None, "security_groups"),
        ("2.1", {"security_groups": [{"name": "web"}]}, None, "'web'"),
        ("2.1", {"key_name": ["x"]}, None, "key_name"),
        ("2.1", {"metadata": {"k": 5}}, None, "metadata.k"),
        ("2.1", {"accessIPv4": "300.1.1.1"}, None, "accessIPv4"),
        ("2.1", {"accessIPv6": "192.0.2.1"}, None, "accessIPv6"),
        ("2.1", {"flavorRef": {"x": 1}}, None, "flavorRef"),
        ("2.1", {"name": "   "}, None, "name"),
        ("2.1", {"user_data": "not base64!"}, None, "user_data"),
        ("2.1", {"bogus": 1}, None, "'bogus' was unexpected"),
        ("2.1", {"description": "d"}, None, "'description' was unexpected"),
        ("2.57", {"personality": []}, None, "'personality' was unexpected"),
        ("2.52", {"tags": ["blue"]}, None, "tags"),
        ("2.63", {"trusted_image_certificates": ["c"]}, None, "certificates"),
        ("2.1", {"block_device_mapping_v2": [{"source_type": "volume", "uuid": "v",
                 "destination_type": "volume", "boot_index": 0}]}, None, "no volumes"),
        ("2.1", {}, ["a list"], "os:scheduler_hints"),
        ("2.1", {}, {"group": {"id": "x"}}, "group"),
    ],
)  # fmt: skip
def test_a_bad_create_is_a_400_that_names_what_is_wrong(
    cloud: Cloud, version: str, server: dict[str, Any], hints: Any, words: str
) -> None:
    """As Nova's request schemas: a wrong type, a value out of range or a key the microversion
    does not have is a 400 naming it (it was a 500, or silently dropped), and no Server is
    made."""
    token = _login(cloud, ADMIN, PROJECT)
    body: dict[str, Any] = {
        "server": {"name": "bad", "imageRef": image_id(cloud), "flavorRef": "1", **server}
    }
    if hints is not None:
        body["os:scheduler_hints"] = hints
    before = _server_names(cloud)
    status, answer = _send(f"{cloud.url}/v2.1/{PROJECT}/servers", token, "POST", body, version)
    assert status == 400, answer
    assert words in answer["badRequest"]["message"], answer
    assert _server_names(cloud) == before


def test_a_bad_rebuild_is_a_400_that_names_what_is_wrong(cloud: Cloud, admin: Clients) -> None:
    """``rebuild`` is checked by the same rules (it was a 500 for a personality that is not
    a list of files), and nothing is changed."""
    uid = admin.servers.create_server(name="rebuild-bad", imageRef=image_id(cloud), flavorRef="1")[
        "server"
    ]["id"]
    token = _login(cloud, ADMIN, PROJECT)
    url = f"{cloud.url}/v2.1/{PROJECT}/servers/{uid}/action"
    try:
        before = k8s_server(cloud, uid)["metadata"]["generation"]
        for version, extra, words in (
            ("2.1", {"personality": "x"}, "personality"),
            ("2.1", {"personality": [{"contents": "eA=="}]}, "personality.0.path"),
            ("2.1", {"key_name": "k"}, "'key_name' was unexpected"),
            ("2.57", {"personality": []}, "'personality' was unexpected"),
            ("2.1", {"name": ["x"]}, "name"),
            ("2.1", {"metadata": "x"}, "metadata"),
            ("2.1", {"bogus": True}, "'bogus' was unexpected"),
            ("2.1", {"imageRef": None}, "imageRef"),
        ):
            body = {"rebuild": {"imageRef": image_id(cloud), **extra}}
            status, answer = _send(url, token, "POST", body, version)
            assert status == 400 and words in answer["badRequest"]["message"], (extra, answer)
        assert k8s_server(cloud, uid)["metadata"]["generation"] == before
    finally:
        admin.servers.delete_server(uid)


def test_a_bad_limit_is_a_400_everywhere(cloud: Cloud, admin: Clients) -> None:
    """``limit`` is read by one rule on every list that takes it: a word or a negative number
    is a 400 (flavors, instance actions, migrations and hypervisors answered a 500), and 0 is
    an empty page."""
    uid = admin.servers.create_server(name="limits", imageRef=image_id(cloud), flavorRef="1")[
        "server"
    ]["id"]
    token = _login(cloud, ADMIN, PROJECT)
    lists = (
        ("v2.1/flavors", "2.1"), ("v2.1/flavors/detail", "2.1"), ("v2.1/servers", "2.1"),
        ("v2.1/servers/detail", "2.1"), ("v2.1/os-hypervisors", "2.33"),
        ("v2.1/os-hypervisors/detail", "2.33"), ("v2.1/os-migrations", "2.59"),
        (f"v2.1/servers/{uid}/os-instance-actions", "2.58"), ("image/v2/images", "2.1"),
        ("v2.1/os-keypairs", "2.35"),
    )  # fmt: skip
    try:
        for path, version in lists:
            for bad in ("abc", "-1"):
                status, body = _send(f"{cloud.url}/{path}?limit={bad}", token, version=version)
                assert status == 400 and "limit" in json.dumps(body), (path, bad, status, body)
            status, body = _send(f"{cloud.url}/{path}?limit=0", token, version=version)
            assert status == 200, (path, body)
            listed = [v for k, v in body.items() if isinstance(v, list)]
            assert listed == [[]], (path, body)
    finally:
        admin.servers.delete_server(uid)


def test_networks_through_the_compute_api(cloud: Cloud) -> None:
    """``os-networks`` lists the project's Networks and the provider networks (up to 2.35, 404
    after, as Nova), by id; a create's ``networks`` become the Server's NICs in order (by id,
    or by name, with a fixed IP; ``none``: no NIC; ``auto`` or nothing: the default); a network
    of another project, a port, a device tag or an IPv6 address is a 400 that says so."""
    bed = cloud.bed
    lan = "os-lan-nets"
    docs = [
        {"apiVersion": G, "kind": "Network", "metadata": {"name": "os-blue", "namespace": PROJECT},
         "spec": {"cidr": "10.44.0.0/24", "dnsNameservers": ["10.44.0.53"]}},
        {"apiVersion": G, "kind": "Network", "metadata": {"name": "os-hidden", "namespace": OTHER},
         "spec": {"cidr": "10.46.0.0/24"}},
        {"apiVersion": G, "kind": "ProviderNetwork", "metadata": {"name": lan},
         "spec": {"physicalNetwork": "lan", "cidr": "10.45.0.0/24", "vlanID": 45}},
    ]  # fmt: skip
    bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    uid = {
        name: str((bed.get(kind, name, ns) or {})["metadata"]["uid"])
        for kind, name, ns in (("network", "os-blue", PROJECT), ("network", "os-hidden", OTHER),
                               ("providernetwork", lan, None))
    }  # fmt: skip
    admin_token = _login(cloud, ADMIN, PROJECT)
    base = f"{cloud.url}/v2.1/{PROJECT}"
    try:
        status, body = _send(f"{base}/os-networks", admin_token)
        assert status == 200, body
        shown = {n["label"]: n for n in body["networks"]}
        assert set(shown) >= {"os-blue", lan} and "os-hidden" not in shown, shown
        blue = shown["os-blue"]
        assert blue["id"] == uid["os-blue"] and blue["cidr"] == "10.44.0.0/24", blue
        assert (blue["netmask"], blue["gateway"], blue["broadcast"], blue["dns1"]) == (
            "255.255.255.0", "10.44.0.1", "10.44.0.255", "10.44.0.53"
        ), blue  # fmt: skip
        assert shown[lan]["vlan"] == 45 and shown[lan]["project_id"] is None, shown[lan]
        status, body = _send(f"{base}/os-networks/{uid[lan]}", admin_token)
        assert status == 200 and body["network"]["label"] == lan, body
        # A member sees the project's networks, without the administrator's keys.
        member_token = _login(cloud, MEMBER, PROJECT)
        status, body = _send(f"{base}/os-networks", member_token)
        assert status == 200, body
        mine = {n["label"]: n for n in body["networks"]}
        assert "os-blue" in mine and "vlan" not in mine["os-blue"], body
        for path, version in (
            (f"os-networks/{uid['os-hidden']}", "2.1"),
            ("os-networks", "2.36"),
            ("os-security-groups", "2.1"),
        ):
            status, body = _send(f"{base}/{path}", admin_token, version=version)
            assert status == 404 and "itemNotFound" in body, (path, body)  # fmt: skip
        # A Nova collection kubenova does not serve is no project id: 404, not the version
        # document (the CLI's security group lookup read that as a list and crashed).
        status, body = _send(f"{cloud.url}/v2.1/os-security-groups", admin_token)
        assert status == 404 and "itemNotFound" in body, body
        status, body = _send(f"{cloud.url}/v2.1/{PROJECT}", admin_token)
        assert status == 200 and body["version"]["id"] == "v2.1", body

        def create(networks: Any, version: str = "2.37") -> tuple[int, Any]:
            server = {"name": "nics", "imageRef": image_id(cloud), "flavorRef": "1"}
            if networks is not None:
                server["networks"] = networks
            return _send(f"{base}/servers", admin_token, "POST", {"server": server}, version)

        made = []
        for asked, version, spec in (
            ([{"uuid": uid["os-blue"], "fixed_ip": "10.44.0.9"}, {"uuid": lan}], "2.37",
             [{"networkRef": "os-blue", "kind": "Network", "fixedIP": "10.44.0.9"},
              {"networkRef": lan, "kind": "ProviderNetwork"}]),
            ("none", "2.37", []),
            ("auto", "2.37", None),
            ([], "2.1", None),
        ):  # fmt: skip
            status, body = create(asked, version)
            assert status == 202, body
            made.append(body["server"]["id"])
            got = k8s_server(cloud, body["server"]["id"])["spec"].get("networks")
            assert got == spec, (asked, got)
        for asked, words in (
            ([{"uuid": uid["os-hidden"]}], f"Network {uid['os-hidden']} could not be found"),
            ([{"port": "p-1"}], "no ports"),
            ([{"uuid": uid["os-blue"], "tag": "nic1"}], "tag"),
            ([{"uuid": uid["os-blue"], "fixed_ip": "fe80::1"}], "IPv4"),
            ([{"uuid": uid["os-blue"], "fixed_ip": "10.44.0.300"}], "Invalid fixed IP"),
            ([{"uuid": uid["os-blue"]}] * 9, "at most 8"),
        ):
            before = _server_names(cloud)
            status, body = create(asked, "2.42")
            assert status == 400 and words in body["badRequest"]["message"], (asked, body)
            assert _server_names(cloud) == before
        for server_id in made:
            _send(f"{base}/servers/{server_id}", admin_token, "DELETE")
    finally:
        bed.kubectl("delete", "network", "os-blue", "-n", PROJECT, "--wait=false", check=False)
        bed.kubectl("delete", "network", "os-hidden", "-n", OTHER, "--wait=false", check=False)
        bed.kubectl("delete", "providernetwork", lan, "--wait=false", check=False)


def test_a_server_no_host_can_take_is_error_with_the_reason(cloud: Cloud, admin: Clients) -> None:
    """As Nova's NoValidHost: ERROR with the reason as the fault (tempest checks the shape),
    so that a client waiting for ACTIVE stops instead of waiting in BUILD for ever. The
    controller goes on trying: once a host can take it, it is bound and becomes ACTIVE."""
    made = admin.servers.create_server(
        name="nowhere", imageRef=image_id(cloud), flavorRef="1", availability_zone="os-mars"
    )
    uid = made["server"]["id"]

    def error() -> dict[str, Any] | None:
        shown = admin.servers.show_server(uid)["server"]
        return dict(shown) if shown["status"] == "ERROR" else None

    shown = eventually(error, 30, step=0.3, what="nowhere in ERROR")
    assert (shown["OS-EXT-STS:vm_state"], shown["OS-EXT-STS:task_state"]) == ("error", None)
    message = shown["fault"]["message"]
    assert "No valid host was found" in message and "AvailabilityZoneFilter" in message, shown
    assert shown["fault"]["code"] == 500 and "details" in shown["fault"], shown["fault"]
    zone = '{"spec": {"availabilityZone": "os-mars"}}'
    cloud.bed.kubectl("patch", "hypervisor", HOSTS[1], "--type=merge", "-p", zone)
    try:
        wait_server(admin, uid, "ACTIVE")
        assert "fault" not in admin.servers.show_server(uid)["server"]
    finally:
        admin.servers.delete_server(uid)
        back = '{"spec": {"availabilityZone": null}}'
        cloud.bed.kubectl("patch", "hypervisor", HOSTS[1], "--type=merge", "-p", back)


#: Values of every JSON type, empty and not, and a long string: what a careless or hostile
#: client sends where another type is expected.
HOSTILE: tuple[Any, ...] = (None, 5, -1, True, "x", "", [], {}, [1], [{}], {"a": [1]}, "a" * 300)


def test_no_hostile_body_is_a_500(cloud: Cloud, admin: Clients) -> None:
    """Every body the facade reads (server update and metadata, flavors and extra specs, key
    pairs, server groups, each server action), first as it should be, then with each of its
    values and then itself replaced by each of HOSTILE, at the oldest and newest
    microversion: none is answered 5xx (a host that was not a string was, for migrate and
    os-migrateLive). What the good bodies make is removed again."""
    uid = admin.servers.create_server(name="fuzz", imageRef=image_id(cloud), flavorRef="1")[
        "server"
    ]["id"]
    wait_server(admin, uid, "ACTIVE")
    token = _login(cloud, ADMIN, PROJECT)
    base = f"{cloud.url}/v2.1/{PROJECT}"
    kinds = ("flavors", "servergroups", "secrets", "servermigrations")

    def existing() -> set[str]:
        out = cloud.bed.kubectl("get", ",".join(kinds), "-n", PROJECT, "-o", "name")
        return set(out.stdout.split())

    before = existing()
    targets: list[tuple[str, str, dict[str, Any]]] = [
        ("PUT", f"servers/{uid}", {"server": {"name": "n", "description": "d"}}),
        ("PUT", f"servers/{uid}/metadata", {"metadata": {"a": "b"}}),
        ("POST", f"servers/{uid}/metadata", {"metadata": {"a": "b"}}),
        ("PUT", f"servers/{uid}/metadata/a", {"meta": {"a": "b"}}),
        ("POST", "flavors", {"flavor": {"name": "fz", "ram": 64, "vcpus": 1, "disk": 1,
                                        "id": "fz", "swap": 0, "rxtx_factor": 1.0,
                                        "OS-FLV-EXT-DATA:ephemeral": 0,
                                        "os-flavor-access:is_public": True}}),
        ("POST", "flavors/1/os-extra_specs", {"extra_specs": {"hw:cpu_mode": "host-model"}}),
        ("POST", "os-keypairs", {"keypair": {"name": "fz", "type": "ssh"}}),
        ("POST", "os-server-groups", {"server_group": {"name": "g", "policies": ["affinity"]}}),
    ]  # fmt: skip
    # Actions whose good body is refused too (no such image, host or flavor change), so that
    # the server stays ACTIVE and every body is read: a state that refuses the action would
    # answer 409 before the body is looked at.
    # rescue comes last: a body that says nothing ({}) is a rescue from the server's own image.
    actions: dict[str, Any] = {
        "resize": {"flavorRef": "1"}, "migrate": {"host": "h"},
        "os-migrateLive": {"host": "h", "block_migration": "auto"},
        "os-getConsoleOutput": {"length": 5}, "createImage": {"name": "i"},
        "rebuild": {"imageRef": "x", "name": "n"}, "confirmResize": None,
        "rescue": {"rescue_image_ref": "x"},
    }  # fmt: skip
    targets += [("POST", f"servers/{uid}/action", {a: b}) for a, b in actions.items()]
    failed = []
    try:
        for method, path, good in targets:
            for version in ("2.1", "2.88"):
                ((top, inner),) = good.items()
                trials = [good] + [{top: h} for h in HOSTILE]
                for key in inner or {}:
                    trials += [{top: {**inner, key: h}} for h in HOSTILE]
                for body in trials:
                    status, answer = _send(f"{base}/{path}", token, method, body, version)
                    if status >= 500:
                        failed.append((version, method, path, body, status, answer))
        assert not failed, "\n".join(repr(f)[:300] for f in failed)
    finally:
        admin.servers.delete_server(uid)
        made = sorted(existing() - before)
        if made:
            cloud.bed.kubectl("delete", *made, "-n", PROJECT, "--wait=false", check=False)


def test_quotas_as_nova_shows_and_sets_them(cloud: Cloud, admin: Clients) -> None:
    """``os-quota-sets`` over ComputeQuotas, every answer checked by tempest against Nova's
    schema (2.1, 2.36 and 2.57 shapes): unlimited by default; ``quota set`` of instances,
    cores and ram writes the project's ComputeQuota ``openstack``, and limits show it; one
    made with kubectl applies too (the smallest holds); detail counts what the project's bound
    servers take; a quota kubenova cannot hold is a 400; a member reads but may not set it.
    A create checks it as Nova does (403 when none fits, as many as fit of a min/max count);
    the controller holds it too: a Server made with kubectl over it is ERROR with
    QuotaExceeded, and bound once ``quota delete`` lifts the limit."""
    project = "os-quotas-nova"
    bed = cloud.bed
    bed.kubectl("create", "namespace", project, check=False)
    c = cloud.clients(ADMIN, project)
    try:
        for version in ("2.1", "2.36", "2.57", "2.88"):
            with microversion(version):
                shown = c.quotas.show_quota_set(project)["quota_set"]
                assert (shown["instances"], shown["cores"], shown["ram"]) == (-1, -1, -1), shown
                assert c.quotas.show_default_quota_set(project)["quota_set"]["cores"] == -1
                assert ("floating_ips" in shown) == (version == "2.1"), shown
                assert ("injected_files" in shown) == (version in ("2.1", "2.36")), shown
        with microversion("2.57"):
            set_ = c.quotas.update_quota_set(project, instances=1, cores=8, ram=4096)["quota_set"]
            assert (set_["instances"], set_["cores"], set_["ram"]) == (1, 8, 4096), set_
        made = bed.get("computequota", "openstack", project)
        assert made is not None and made["spec"] == {"servers": 1, "vcpus": 8, "memoryMiB": 4096}
        other = {"apiVersion": G, "kind": "ComputeQuota",
                 "metadata": {"name": "by-kubectl", "namespace": project},
                 "spec": {"vcpus": 4}}  # fmt: skip
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other))
        with microversion("2.60"):
            limits = c.limits.show_limits()["limits"]["absolute"]
        maxima = ("maxTotalInstances", "maxTotalCores", "maxTotalRAMSize")
        assert [limits[k] for k in maxima] == [1, 4, 4096], limits
        token = _login(cloud, ADMIN, project)
        for asked, words in (({"key_pairs": 5}, "cannot limit key_pairs"),
                             ({"cores": "many"}, "cores"), ({"cores": -2}, "minimum of -1"),
                             ({"bogus": 1}, "'bogus' was unexpected")):  # fmt: skip
            status, body = _send(f"{cloud.url}/v2.1/os-quota-sets/{project}", token, "PUT",
                                 {"quota_set": asked})  # fmt: skip
            assert status == 400 and words in body["badRequest"]["message"], (asked, body)
        member = cloud.clients(MEMBER, PROJECT)
        assert member.quotas.show_quota_set(PROJECT)["quota_set"]["instances"] == -1
        with pytest.raises(tempest_exc.Forbidden):
            member.quotas.update_quota_set(PROJECT, instances=3)
        # A create checks it first, as Nova: none fits is a 403, some fit is that many.
        boot(cloud, c, "within")
        with pytest.raises(tempest_exc.Forbidden, match="Quota exceeded for instances"):
            c.servers.create_server(name="beyond", imageRef=image_id(cloud), flavorRef="1")
        c.quotas.update_quota_set(project, instances=3)
        c.servers.create_server(name="some", imageRef=image_id(cloud), flavorRef="1",
                                min_count=1, max_count=5)  # fmt: skip
        listed = c.servers.list_servers()["servers"]
        assert sorted(s["name"] for s in listed) == ["some-1", "some-2", "within"], listed
        # The controller holds it too: a Server made with kubectl over the quota waits, which
        # the API shows as ERROR with QuotaExceeded, and is bound once the quota is lifted.
        over = {"apiVersion": G, "kind": "Server",
                "metadata": {"name": "by-kubectl", "namespace": project},
                "spec": {"flavorRef": "os.small", "imageRef": "os-sim-image"}}  # fmt: skip
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(over))
        uid = str((bed.get("server", "by-kubectl", project) or {})["metadata"]["uid"])

        def error() -> dict[str, Any] | None:
            shown = c.servers.show_server(uid)["server"]
            return dict(shown) if shown["status"] == "ERROR" else None

        shown = eventually(error, 30, step=0.3, what="by-kubectl in ERROR")
        assert "QuotaExceeded" in shown["fault"]["message"], shown["fault"]
        detail = eventually(
            lambda: (d := c.quotas.show_quota_set(project, detail=True)["quota_set"])[
                "instances"]["in_use"] == 3 and d, 30, what="3 servers bound",
        )  # fmt: skip
        assert detail["instances"] == {"limit": 3, "in_use": 3, "reserved": 0}, detail
        assert detail["cores"]["in_use"] == 3 and detail["ram"]["in_use"] == 384, detail
        c.quotas.delete_quota_set(project)
        assert bed.get("computequota", "openstack", project) is None
        assert bed.get("computequota", "by-kubectl", project) is not None
        wait_server(c, uid, "ACTIVE")
        for server in c.servers.list_servers()["servers"]:
            c.servers.delete_server(server["id"])
    finally:
        bed.kubectl("delete", "namespace", project, "--wait=false", check=False)


def _cli(
    cloud: Cloud, user: openstackapi.OpenStackUser, project: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The real ``openstack`` CLI with a Keystone v3 password login."""
    env = openstackapi.cli_env(cloud.url, user, project, cloud.bed.workdir)
    openstack = pathlib.Path(sys.executable).parent / "openstack"
    return subprocess.run(
        [str(openstack), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_cli_lists_projects_and_their_quotas(cloud: Cloud) -> None:
    """``openstack project list`` and ``openstack quota list --compute`` read Keystone's
    ``GET /v3/projects``: the projects (namespaces) the user may use, an administrator all of
    them, a member only its own; ``quota list`` shows a project whose quotas were set and
    leaves out those at the defaults; its filters (``name``, ``enabled``) hold."""
    project = "os-quotas-cli"
    cloud.bed.kubectl("create", "namespace", project, check=False)
    try:
        out = _cli(cloud, ADMIN, project, "project", "list", "-f", "json")
        assert out.returncode == 0, out.stderr
        names = {p["Name"] for p in json.loads(out.stdout)}
        assert {project, PROJECT, OTHER} <= names, names
        out = _cli(cloud, MEMBER, PROJECT, "project", "list", "-f", "json")
        assert out.returncode == 0, out.stderr
        assert [p["Name"] for p in json.loads(out.stdout)] == [PROJECT], out.stdout
        out = _cli(cloud, ADMIN, project, "quota", "set", "--instances", "2", "--cores", "6",
                   project)  # fmt: skip
        assert out.returncode == 0, out.stderr
        out = _cli(cloud, ADMIN, project, "quota", "list", "--compute", "-f", "json")
        assert out.returncode == 0, out.stderr
        rows = {r["Project ID"]: r for r in json.loads(out.stdout)}
        assert project in rows, rows
        assert (rows[project]["Instances"], rows[project]["Cores"]) == (2, 6), rows[project]
        assert PROJECT not in rows, rows  # its quotas are the defaults
        token = _login(cloud, ADMIN, project)
        for query, expect in ((f"name={project}", [project]), ("name=nothing-here", []),
                              (f"name={project}&enabled=false", [])):  # fmt: skip
            status, body = _send(f"{cloud.url}/identity/v3/projects?{query}", token)
            assert status == 200, body
            assert [p["name"] for p in body["projects"]] == expect, (query, body)
    finally:
        cloud.bed.kubectl("delete", "namespace", project, "--wait=false", check=False)


def test_a_users_projects_are_its_own_or_an_administrators_to_see(cloud: Cloud) -> None:
    """``GET /v3/users/{id}/projects``: a user sees its own projects; another user's only an
    administrator sees (403 for a member, Keystone's ``identity:list_user_projects``), read as
    that user's Kubernetes identity; an unknown user is a 404."""
    users = f"{cloud.url}/identity/v3/users"
    member, admin = _login(cloud, MEMBER, PROJECT), _login(cloud, ADMIN, PROJECT)
    status, body = _send(f"{users}/{MEMBER.name}/projects", member)
    assert status == 200, body
    assert [p["name"] for p in body["projects"]] == [PROJECT], body
    status, body = _send(f"{users}/{ADMIN.name}/projects", member)
    assert status == 403, body
    assert "identity:list_user_projects" in body["error"]["message"], body
    status, body = _send(f"{users}/{MEMBER.name}/projects", admin)
    assert status == 200, body
    assert [p["name"] for p in body["projects"]] == [PROJECT], body  # bob's, not os-alice's
    status, body = _send(f"{users}/{ADMIN.name}/projects?name={OTHER}", admin)
    assert status == 200, body
    assert [p["name"] for p in body["projects"]] == [OTHER], body
    status, body = _send(f"{users}/nobody-here/projects", admin)
    assert status == 404, body


def test_hypervisor_statistics_search_and_servers(cloud: Cloud, admin: Clients) -> None:
    """``os-hypervisors/statistics`` (``openstack hypervisor stats show``) sums every host's
    detail, and the pre-2.53 ``{pattern}/search`` and ``{pattern}/servers`` find hosts by a
    part of their name, with the servers on them; each answer checked by tempest against
    Nova's schema, and each gone (404) from the microversion that removed it."""
    uid = boot(cloud, admin, "on-a-host")
    try:
        host = str(admin.servers.show_server(uid)["server"].get("OS-EXT-SRV-ATTR:host"))
        assert host in HOSTS, host
        with microversion("2.52"):
            stats = admin.hypervisors.show_hypervisor_statistics()["hypervisor_statistics"]
            details = admin.hypervisors.list_hypervisors(detail=True)["hypervisors"]
            found = admin.hypervisors.search_hypervisor("os-sim-")["hypervisors"]
            on = admin.hypervisors.list_servers_on_hypervisor(host)["hypervisors"]
            with pytest.raises(tempest_exc.NotFound):
                admin.hypervisors.search_hypervisor("no-such-host")
        assert stats["count"] == len(details) == len(HOSTS), (stats, details)
        for key in ("vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "local_gb",
                    "running_vms", "free_ram_mb"):  # fmt: skip
            assert stats[key] == sum(d[key] for d in details), (key, stats, details)
        assert stats["vcpus"] == 16, stats  # two simulated hosts of 8
        assert sorted(h["hypervisor_hostname"] for h in found) == sorted(HOSTS), found
        assert [h["hypervisor_hostname"] for h in on] == [host], on
        assert uid in [s["uuid"] for s in on[0]["servers"]], on
        token = _login(cloud, ADMIN, PROJECT)
        for path, removed in (("statistics", "2.88"), ("os-sim-a/search", "2.53"),
                              ("os-sim-a/servers", "2.53")):  # fmt: skip
            status, _ = _send(f"{cloud.url}/v2.1/os-hypervisors/{path}", token, version=removed)
            assert status == 404, (path, removed, status)
    finally:
        admin.servers.delete_server(uid)


def test_a_hypervisors_uptime_is_its_hosts(cloud: Cloud, admin: Clients) -> None:
    """``os-hypervisors/{id}/uptime`` (until 2.87) and the 2.88 ``uptime`` of a hypervisor
    say how long its host has been up (the boot time its agent reports; the first checked by
    tempest against Nova's schema); the URL is gone (404) from 2.88."""
    stat = pathlib.Path("/proc/stat").read_text().split("btime ")[1]
    up_minutes = (time.time() - int(stat.split()[0])) / 60  # this machine's: the hosts'

    def minutes(text: str) -> int:
        m = re.match(r"^\d\d:\d\d:\d\d up (?:(\d+) days?, )?(?:(\d+) min|\s*(\d+):(\d\d))$", text)
        assert m, text
        days, mins, hours, mins2 = (int(g) if g else 0 for g in m.groups())
        return days * 1440 + hours * 60 + mins + mins2

    with microversion("2.87"):
        hv = admin.hypervisors.list_hypervisors()["hypervisors"][0]
        up = admin.hypervisors.show_hypervisor_uptime(hv["id"])["hypervisor"]
    assert up["hypervisor_hostname"] == hv["hypervisor_hostname"] and up["state"] == "up", up
    assert abs(minutes(up["uptime"]) - up_minutes) <= 2, (up, up_minutes)
    token = _login(cloud, ADMIN, PROJECT)  # tempest has no schema of 2.88's hypervisor
    status, body = _send(f"{cloud.url}/v2.1/os-hypervisors/{hv['id']}", token, version="2.88")
    assert status == 200, body
    assert abs(minutes(body["hypervisor"]["uptime"]) - up_minutes) <= 2, (body, up_minutes)
    status, _ = _send(f"{cloud.url}/v2.1/os-hypervisors/{hv['id']}/uptime", token, version="2.88")
    assert status == 404, status


def test_access_addresses_are_kept_and_shown(cloud: Cloud, admin: Clients) -> None:
    """``accessIPv4`` / ``accessIPv6`` given at create, update or rebuild are kept and shown
    as Nova shows them (not dropped); one of the wrong family or no address is a 400."""
    uid = boot(cloud, admin, "reachable", accessIPv4="192.0.2.10")
    try:
        shown = admin.servers.show_server(uid)["server"]
        assert (shown["accessIPv4"], shown["accessIPv6"]) == ("192.0.2.10", ""), shown
        admin.servers.update_server(uid, accessIPv6="2001:db8::0:1")
        shown = admin.servers.show_server(uid)["server"]
        assert (shown["accessIPv4"], shown["accessIPv6"]) == ("192.0.2.10", "2001:db8::1")
        token = _login(cloud, ADMIN, PROJECT)
        for change, field in (({"accessIPv4": "2001:db8::1"}, "accessIPv4"),
                              ({"accessIPv6": "not-an-address"}, "accessIPv6"),
                              ({"accessIPv4": 5}, "accessIPv4"),
                              ({"hostname": "h"}, "'hostname' was unexpected")):  # fmt: skip
            status, body = _send(f"{cloud.url}/v2.1/servers/{uid}", token, "PUT",
                                 {"server": change})  # fmt: skip
            assert status == 400 and field in body["badRequest"]["message"], (change, body)
        admin.servers.rebuild_server(uid, image_id(cloud), accessIPv4="198.51.100.7")
        wait_server(admin, uid, "ACTIVE")
        assert admin.servers.show_server(uid)["server"]["accessIPv4"] == "198.51.100.7"
    finally:
        admin.servers.delete_server(uid)


def test_a_resize_no_host_can_take_is_undone_and_can_be_asked_again(
    cloud: Cloud, admin: Clients
) -> None:
    """A resize to a flavor no host has room for fails in the controller (NoValidHost): the
    Server is told (a ResizeFailed Event), and the facade undoes it as Nova does (the old
    flavor, running again, no confirmation pending) instead of showing RESIZE for ever;
    asked again, the controller tries again."""
    flavor = admin.flavors.create_flavor(name="too big", ram=10**6, vcpus=1, disk=1, id="990")
    uid = boot(cloud, admin, "stays-small")
    try:
        name = next(
            s["metadata"]["name"]
            for s in json.loads(cloud.bed.kubectl("get", "srv", "-n", PROJECT, "-o", "json")
                                .stdout)["items"]
            if s["metadata"]["uid"] == uid
        )  # fmt: skip
        before = (cloud.bed.get("server", name, PROJECT) or {})["spec"]["flavorRef"]
        for attempt in (1, 2):
            admin.servers.resize_server(uid, flavor["flavor"]["id"])
            back = wait_server(admin, uid, "ACTIVE", timeout=90)
            assert back["flavor"]["id"] == "1", back  # the one it was booted with
            body = cloud.bed.get("server", name, PROJECT)
            assert body is not None and body["spec"]["flavorRef"] == before, body["spec"]
            assert body["spec"]["powerState"] == "Running", body["spec"]
            failed = [
                m for m in json.loads(cloud.bed.kubectl("get", "smig", "-n", PROJECT, "-o",
                                                        "json").stdout)["items"]
                if m["spec"]["serverRef"] == name and m["status"].get("phase") == "Failed"
            ]  # fmt: skip
            assert len(failed) == 1, (attempt, failed)  # the first attempt's went on retry
            assert failed[0]["status"]["reason"] == "NoValidHost", failed[0]["status"]
            events = cloud.bed.kubectl(
                "get", "events", "-n", PROJECT, "--field-selector",
                f"involvedObject.name={name},reason=ResizeFailed", "-o", "json",
            ).stdout  # fmt: skip
            said = [e["message"] for e in json.loads(events)["items"]]
            assert said and "NoValidHost" in said[-1], said
        # The same flavor asked for with kubectl: SHUTOFF once it failed, not RESIZE for ever.
        big_name = next(
            f["metadata"]["name"]
            for f in json.loads(cloud.bed.kubectl("get", "flavors", "-o", "json").stdout)["items"]
            if (f["metadata"].get("annotations") or {}).get(names.FLAVOR_ID) == "990"
        )
        change = {"spec": {"flavorRef": big_name, "powerState": "Stopped"}}
        cloud.bed.kubectl(
            "patch", "server", name, "-n", PROJECT, "--type", "merge", "-p", json.dumps(change)
        )
        wait_server(admin, uid, "SHUTOFF", timeout=90)
        shown = admin.servers.show_server(uid)["server"]
        assert shown["flavor"]["id"] == "1", shown  # it keeps its flavor
    finally:
        admin.servers.delete_server(uid)
        admin.flavors.delete_flavor("990")
