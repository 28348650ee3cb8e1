"""The real ``openstack`` CLI (python-openstackclient 10.5.0) and ``curl`` against the OpenStack
API facade on the real stack (the session's bed: two libvirtd + QEMU hosts, the controller,
the agents), each effect checked on libvirt and on the guest's own console.

Every "Must show" command runs in both ways of reaching the facade: ``OS_AUTH_TYPE=none`` with
endpoint overrides, and a Keystone v3 password login. The facade is started once for the module.
"""

from __future__ import annotations

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

from kubenova_devenv import guestimage, openstackapi, stack
from tests.conftest import eventually
from tests.e2e import helpers

from .conftest import unique_namespace

pytestmark = pytest.mark.timeout(900)

ADMIN = openstackapi.OpenStackUser("cloud-admin", "admin-secret", "alice")
BOB = openstackapi.OpenStackUser("bob", "bob-secret", "bob")
NOAUTH_USER = "openstack-noauth"
OPENSTACK = pathlib.Path(sys.executable).parent / "openstack"


class Cloud:
    """The facade on the bed, and how to run the CLI against it."""

    def __init__(self, bed: stack.Stack, url: str, proc: stack.Proc, port: int) -> None:
        self.bed, self.url, self.proc, self.port = bed, url, proc, port

    def env(
        self, mode: str, project: str, user: openstackapi.OpenStackUser = ADMIN
    ) -> dict[str, str]:
        if mode != "noauth":
            return openstackapi.cli_env(self.url, user, project, self.bed.workdir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["HOME"] = str(self.bed.workdir)  # no ~/.config/openstack of the machine
        env.update(
            {
                "OS_AUTH_TYPE": "none",
                "OS_COMPUTE_ENDPOINT_OVERRIDE": f"{self.url}/v2.1/{project}",
                "OS_IMAGE_ENDPOINT_OVERRIDE": f"{self.url}/image",
                "OS_IDENTITY_ENDPOINT_OVERRIDE": f"{self.url}/identity",
            }
        )
        return env

    def cli(
        self, mode: str, project: str, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(OPENSTACK), *args],
            env=self.env(mode, project),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed: {out.stderr or out.stdout}")
        return out

    def json(self, mode: str, project: str, *args: str) -> Any:
        return json.loads(self.cli(mode, project, *args, "-f", "json").stdout)

    def restart(self) -> None:
        self.proc.kill()
        self.proc, self.url = openstackapi.start(self.bed, port=self.port, noauth_user=NOAUTH_USER)


@pytest.fixture(scope="module")
def cloud(bed: stack.Stack) -> Iterator[Cloud]:
    openstackapi.install(bed, [ADMIN, BOB])
    for user in (ADMIN.kubernetes_user, NOAUTH_USER):
        openstackapi.grant(bed, "kubenova-openstack-admin", user=user)
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    from kubenova_devenv import netutil  # noqa: PLC0415

    port = netutil.free_port()
    proc, url = openstackapi.start(bed, port=port, noauth_user=NOAUTH_USER)
    c = Cloud(bed, url, proc, port)
    yield c
    c.proc.stop()


@pytest.fixture
def project(bed: stack.Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from unique_namespace(bed, request, "os")


# ----------------------------------------------------------------------------- helpers


def http(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read().decode()
            return resp.status, dict(resp.headers), json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        exc.close()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return exc.code, dict(exc.headers), parsed


def token(cloud: Cloud, user: openstackapi.OpenStackUser, project: str) -> tuple[int, str, Any]:
    body = openstackapi.password_login(user, project)
    status, headers, answer = http(f"{cloud.url}/identity/v3/auth/tokens", "POST", body)
    return status, headers.get("X-Subject-Token", ""), answer


def k8s_server(bed: stack.Stack, project: str, uid: str) -> dict[str, Any]:
    out = bed.kubectl(
        "get", "servers", "-n", project, "-l", f"compute.kubenova.io/server-id={uid}", "-o", "json"
    )
    items = json.loads(out.stdout)["items"]
    assert len(items) == 1, items
    return dict(items[0])


class Guest:
    """A facade-made server seen from below: its domain and its console."""

    def __init__(self, bed: stack.Stack, project: str, uid: str) -> None:
        self.bed, self.project, self.uid = bed, project, uid

    def body(self) -> dict[str, Any]:
        return k8s_server(self.bed, self.project, self.uid)

    def host(self) -> str:
        return str(self.body()["status"]["nodeName"])

    def domstate(self) -> str:
        return self.bed.hosts[self.host()].virsh("domstate", self.uid).strip()

    def console(self) -> str:
        return self.bed.console(self.host(), self.uid)

    def boots(self) -> int:
        return helpers.boots(self.console())

    def uptime(self) -> float:
        return helpers.last_uptime(self.console())

    def counting(self, above: float, timeout: float = 90) -> float:
        return float(
            eventually(
                lambda: (u := self.uptime()) > above and u, timeout, what=f"uptime above {above}"
            )
        )


def wait_status(cloud: Cloud, mode: str, project: str, uid: str, status: str) -> dict[str, Any]:
    """``server show`` until the status, with no task state left (really converged)."""

    def reached() -> dict[str, Any] | None:
        shown = cloud.json(mode, project, "server", "show", uid)
        ok = shown["status"] == status and shown["OS-EXT-STS:task_state"] is None
        return shown if ok else None

    return dict(eventually(reached, 180, step=1.0, what=f"{uid} {status}"))


MODES = ("noauth", "password")


class Turns:
    """The CLI through both ways of reaching the facade in turn (``OS_AUTH_TYPE=none`` with
    endpoint overrides, then a Keystone v3 password login, then again ...): each test's
    commands go through both, and no guest is checked twice for the sake of the login."""

    def __init__(self, cloud: Cloud, project: str) -> None:
        self.cloud, self.project, self.count = cloud, project, 0

    def mode(self) -> str:
        self.count += 1
        return MODES[self.count % 2]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cloud.cli(self.mode(), self.project, *args)

    def js(self, *args: str) -> Any:
        return self.cloud.json(self.mode(), self.project, *args)


# ----------------------------------------------------------------------------- raw HTTP


def test_versions_microversions_faults_and_request_ids(cloud: Cloud, project: str) -> None:
    status, headers, body = http(f"{cloud.url}/")
    assert status == 200 and [v["id"] for v in body["versions"]] == ["v2.0", "v2.1"]
    assert body["versions"][1]["version"] == "2.88" and body["versions"][1]["min_version"] == "2.1"
    for path in ("/v2/", "/v2.1/"):
        status, _, body = http(cloud.url + path)
        assert status == 200 and set(body["version"]) == {
            "id",
            "links",
            "media-types",
            "status",
            "version",
            "min_version",
            "updated",
        }
    _, tok, _ = token(cloud, ADMIN, project)
    auth = {"X-Auth-Token": tok}
    status, headers, _ = http(
        f"{cloud.url}/v2.1/flavors", headers={**auth, "OpenStack-API-Version": "compute 2.60"}
    )
    assert status == 200 and headers["OpenStack-API-Version"] == "compute 2.60"
    assert headers["X-OpenStack-Nova-API-Version"] == "2.60"
    assert headers["x-openstack-request-id"].startswith("req-")
    status, headers, _ = http(
        f"{cloud.url}/v2.1/flavors", headers={**auth, "X-OpenStack-Nova-API-Version": "2.53"}
    )
    assert headers["OpenStack-API-Version"] == "compute 2.53"
    assert "Vary" in headers
    status, _, body = http(
        f"{cloud.url}/v2.1/flavors", headers={**auth, "OpenStack-API-Version": "compute latest"}
    )
    assert status == 200
    status, _, body = http(
        f"{cloud.url}/v2.1/flavors", headers={**auth, "OpenStack-API-Version": "compute 2.x"}
    )
    assert status == 400 and body["badRequest"]["code"] == 400
    status, _, body = http(
        f"{cloud.url}/v2.1/flavors", headers={**auth, "OpenStack-API-Version": "compute 2.999"}
    )
    assert status == 406 and "maximum is 2.88" in body["computeFault"]["message"]
    status, headers, body = http(
        f"{cloud.url}/v2.1/servers/0c0ffee0-0000-4000-8000-000000000000", headers=auth
    )
    assert status == 404 and set(body) == {"itemNotFound"}
    assert body["itemNotFound"]["code"] == 404 and headers["x-openstack-request-id"]
    status, _, body = http(f"{cloud.url}/v2.1/servers", headers={"X-Auth-Token": tok[:-4] + "AAAA"})
    assert status == 401 and set(body) == {"unauthorized"}  # a forged token
    # The shapes of the microversions: the embedded flavor from 2.47, and exactly Nova's keys.
    status, _, body = http(f"{cloud.url}/v2.1/flavors/detail", headers=auth)
    assert set(body["flavors"][0]) == {
        "id", "name", "ram", "disk", "swap", "OS-FLV-EXT-DATA:ephemeral",
        "OS-FLV-DISABLED:disabled", "vcpus", "os-flavor-access:is_public", "rxtx_factor", "links",
    }  # fmt: skip
    assert body["flavors"][0]["swap"] == ""
    status, _, body = http(
        f"{cloud.url}/v2.1/flavors/detail",
        headers={**auth, "OpenStack-API-Version": "compute 2.75"},
    )
    assert body["flavors"][0]["swap"] == 0 and "extra_specs" in body["flavors"][0]


def test_a_server_no_host_can_take_ends_the_wait_with_the_reason(
    cloud: Cloud, project: str
) -> None:
    """``server create --wait`` of a Server no host can take (a zone no host is in) stops, as
    with Nova's NoValidHost, and ``server show`` says why; it waited in BUILD for ever."""
    boot = ("server", "create", "--flavor", "m1.tiny", "--image", "kubenova-guest")
    out = cloud.cli("password", project, *boot, "--availability-zone", "nowhere", "--wait",
                    "lost", check=False, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "Error creating server: lost" in out.stderr, out
    shown = cloud.json("password", project, "server", "show", "lost")
    assert shown["status"] == "ERROR", shown
    assert "No valid host was found" in shown["fault"]["message"], shown["fault"]
    cloud.cli("password", project, "server", "delete", "--wait", "lost")


def test_nova_boot_with_curl(cloud: Cloud, project: str) -> None:
    """``nova boot test2 --flavor 1 --image <image>``, as raw requests: 202 and a Location."""
    cloud.cli("password", project, "flavor", "create", "--id", "1", "--vcpus", "1",
              "--ram", "128", "--disk", "1", "m1.one", check=False)  # fmt: skip
    _, tok, _ = token(cloud, ADMIN, project)
    image_id = cloud.json("password", project, "image", "show", "kubenova-guest")["id"]

    def curl(*args: str) -> tuple[int, dict[str, Any] | None, str]:
        out = subprocess.run(
            ["curl", "-sS", "-i", "-H", f"X-Auth-Token: {tok}", *args],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        head, _, text = out.stdout.replace("\r\n", "\n").partition("\n\n")
        code = int(head.split()[1])
        return code, json.loads(text) if text.strip() else None, head

    code, body, _ = curl(f"{cloud.url}/v2.1")
    assert code == 200 and body is not None and body["version"]["id"] == "v2.1"
    code, body, _ = curl(f"{cloud.url}/v2.1/images/{image_id}")
    assert code == 200 and body is not None and body["image"]["status"] == "ACTIVE"
    code, body, _ = curl(f"{cloud.url}/v2.1/flavors/1")
    assert code == 200 and body is not None and body["flavor"]["ram"] == 128
    request = {"server": {"name": "test2", "imageRef": image_id, "flavorRef": "1"}}
    code, body, head = curl(
        "-X", "POST", "-H", "Content-Type: application/json",
        "-d", json.dumps(request), f"{cloud.url}/v2.1/servers",
    )  # fmt: skip
    assert code == 202, head
    assert body is not None
    uid = body["server"]["id"]
    assert f"Location: {cloud.url}/v2.1/servers/{uid}" in head
    assert set(body["server"]) == {"id", "links", "OS-DCF:diskConfig", "security_groups"}

    def active() -> bool:
        code, shown, _ = curl(f"{cloud.url}/v2.1/servers/{uid}")
        return code == 200 and shown is not None and shown["server"]["status"] == "ACTIVE"

    eventually(active, 180, step=1.0, what="test2 ACTIVE")
    guest = Guest(cloud.bed, project, uid)
    assert guest.domstate() == "running"
    assert guest.body()["metadata"]["annotations"]["compute.kubenova.io/display-name"] == "test2"


def test_cli_server_lifecycle(cloud: Cloud, project: str) -> None:
    turns = Turns(cloud, project)
    run, js, mode = turns.run, turns.js, "password"
    # Flavors (an id such as "7", and one made without an id), images, key pairs.
    flavor_name = f"os.tiny.{mode}"
    made = js("flavor", "create", "--id", f"7{len(mode)}", "--vcpus", "1", "--ram", "128",
              "--disk", "1", flavor_name)  # fmt: skip
    assert made["id"] == f"7{len(mode)}" and made["ram"] == 128
    # --property: the CLI sets extra specs right after the create (an unused flavor takes them)
    spare = js("flavor", "create", "--vcpus", "1", "--ram", "64", "--property",
               "hw:cpu_policy=shared", f"Spare {mode}")  # fmt: skip
    assert re.fullmatch(r"[0-9a-f-]{36}", spare["id"])
    assert js("flavor", "show", spare["id"])["properties"] == {"hw:cpu_policy": "shared"}
    assert {f["ID"] for f in js("flavor", "list")} >= {made["id"], spare["id"]}
    assert js("flavor", "show", made["id"])["name"] == flavor_name
    run("flavor", "delete", spare["id"])
    assert spare["id"] not in {f["ID"] for f in js("flavor", "list")}
    images = js("image", "list")
    assert "kubenova-guest" in {i["Name"] for i in images}
    image = js("image", "show", "kubenova-guest")
    assert image["status"] == "active" and image["min_ram"] == 64
    key_file = cloud.bed.workdir / f"key-{project}"
    run("keypair", "create", "--private-key", str(key_file), f"key-{mode}")
    public = js("keypair", "show", f"key-{mode}")
    assert public["fingerprint"]

    # Create and wait: the guest really runs, with the key on its config drive.
    shown = js("server", "create", "--flavor", made["id"], "--image", "kubenova-guest",
               "--key-name", f"key-{mode}", "--wait", "web one")  # fmt: skip
    uid = shown["id"]
    assert shown["status"] == "ACTIVE" and shown["name"] == "web one"
    guest = Guest(cloud.bed, project, uid)
    body = guest.body()
    assert guest.domstate() == "running"
    assert body["spec"]["sshKeys"][0].startswith("ssh-ed25519 ")
    guest.counting(0.5)
    assert [s["ID"] for s in js("server", "list")] == [uid]
    long = js("server", "list", "--long")
    assert long[0]["Task State"] is None and long[0]["Host"] == guest.host()
    assert long[0]["Power State"] in (1, "Running")

    def step(action: list[str], status: str, domstate: str) -> None:
        run("server", *action, uid)
        wait_status(cloud, mode, project, uid, status)
        assert guest.domstate() == domstate, (action, guest.domstate())

    step(["stop"], "SHUTOFF", "shut off")
    assert "reboot: Power down" in guest.console()
    step(["start"], "ACTIVE", "running")
    eventually(lambda: guest.boots() == 2, 60, what="a second boot")
    before = guest.counting(1.0)
    step(["suspend"], "SUSPENDED", "shut off")
    step(["resume"], "ACTIVE", "running")
    assert guest.counting(before) > before and guest.boots() == 2  # memory kept, no boot
    step(["pause"], "PAUSED", "paused")
    frozen = guest.console()
    time.sleep(1.5)
    assert guest.console() == frozen  # vCPUs stopped
    step(["unpause"], "ACTIVE", "running")
    guest.counting(helpers.last_uptime(frozen))
    step(["reboot"], "ACTIVE", "running")
    eventually(lambda: guest.boots() == 3, 90, what="the soft reboot's boot")
    step(["reboot", "--hard"], "ACTIVE", "running")
    eventually(lambda: guest.boots() == 4, 90, what="the hard reboot's boot")
    step(["rescue"], "RESCUE", "running")
    eventually(lambda: guest.boots() == 5, 90, what="the rescue boot")
    eventually(
        lambda: f"disk /dev/vdb: {guestimage.DISK_MARKER}" in guest.console(), 90,
        what="the server's disk as /dev/vdb in rescue",
    )  # fmt: skip
    step(["unrescue"], "ACTIVE", "running")
    eventually(lambda: guest.boots() == 6, 90, what="the unrescued boot")

    # Rebuild from a disk image with its own boot loader: its properties are in the image
    # document; the guest boots from its new disk (SeaBIOS, SYSLINUX), same id and host.
    bios = cloud.bed.boot_disk_manifest("bios", hw_rng_model="virtio")  # as test_disk_images
    helpers.apply(cloud.bed, json.dumps(bios))
    props = js("image", "show", "kubenova-guest-bios")["properties"]
    assert props["hw_firmware_type"] == "bios" and props["hw_rng_model"] == "virtio", props
    host = guest.host()
    run("server", "rebuild", "--image", "kubenova-guest-bios", "--wait", uid)
    wait_status(cloud, mode, project, uid, "ACTIVE")
    eventually(lambda: guest.boots() == 7, 90, what="the rebuilt boot")
    assert "SYSLINUX" in guest.console()[guest.console().rfind("SeaBIOS") :]
    rebuilt = js("server", "show", uid)
    assert rebuilt["image"].startswith("kubenova-guest-bios"), rebuilt["image"]
    assert guest.host() == host and guest.body()["status"]["image"]["name"] == "kubenova-guest-bios"

    # Console and history.
    log = eventually(
        lambda: "kubenova-uptime" in (t := run("console", "log", "show", uid).stdout) and t,
        60, what="console output",
    )  # fmt: skip
    assert guestimage.MARKER in log
    events = {e["Action"] for e in js("server", "event", "list", uid)}
    assert {"create", "stop", "start", "suspend", "resume", "pause", "unpause", "reboot",
            "rescue", "unrescue", "rebuild"} <= events  # fmt: skip

    # Delete --wait: the domain and its disks are gone.
    host = guest.host()
    run("server", "delete", "--wait", uid)
    assert js("server", "list") == []
    assert uid not in cloud.bed.hosts[host].virsh("list", "--all", "--uuid")
    assert helpers.volumes_for(cloud.bed, uid) == []
    run("flavor", "delete", made["id"])
    run("keypair", "delete", f"key-{mode}")


def test_cli_hosts_moves_and_groups(cloud: Cloud, project: str) -> None:
    turns = Turns(cloud, project)
    run, js, mode = turns.run, turns.js, "password"

    def all_up() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = js("hypervisor", "list")
        return found if {h["State"] for h in found} == {"up"} else None

    hosts = eventually(all_up, 60, step=1.0, what="both hosts up")
    assert sorted(h["Hypervisor Hostname"] for h in hosts) == ["host-a", "host-b"]
    one = js("hypervisor", "show", hosts[0]["ID"])
    assert one["hypervisor_hostname"] == hosts[0]["Hypervisor Hostname"]
    assert one["hypervisor_type"] == "QEMU" and one["state"] == "up"
    services = js("compute", "service", "list")
    assert sorted((s["Binary"], s["Host"], s["State"]) for s in services) == [
        ("nova-compute", "host-a", "up"), ("nova-compute", "host-b", "up")
    ]  # fmt: skip
    zones = js("availability", "zone", "list", "--compute")
    assert {(z["Zone Name"], z["Zone Status"]) for z in zones} == {("nova", "available")}
    zones = js("availability", "zone", "list", "--compute", "--long")
    assert {z["Host Name"] for z in zones} == {"host-a", "host-b"}

    group = js("server", "group", "create", "--policy", "anti-affinity", f"spread {mode}")
    assert group["policy"] == "anti-affinity"
    assert group["id"] in {g["ID"] for g in js("server", "group", "list")}
    uids = []
    for i in range(2):
        made = js("server", "create", "--flavor", "m1.tiny", "--image", "kubenova-guest",
                  "--hint", f"group={group['id']}", "--wait", f"spread-{i}")  # fmt: skip
        uids.append(made["id"])
    guests = [Guest(cloud.bed, project, u) for u in uids]
    assert {g.host() for g in guests} == {"host-a", "host-b"}  # anti-affinity
    assert set(js("server", "group", "show", group["id"])["members"]) == set(uids)

    # The group keeps its members apart on moves too: the second one goes first.
    run("server", "delete", "--wait", uids[1])
    g = guests[0]
    g.counting(1.0)
    # Resize + confirm: stopped, moved cold with the new size, started again (VERIFY_RESIZE).
    bigger = f"os.big.{mode}"
    js("flavor", "create", "--vcpus", "1", "--ram", "192", "--disk", "2", bigger)
    run("server", "resize", "--flavor", bigger, uids[0])
    wait_status(cloud, mode, project, uids[0], "VERIFY_RESIZE")
    assert g.domstate() == "running"
    assert g.body()["status"]["flavor"]["memoryMiB"] == 192
    dominfo = cloud.bed.hosts[g.host()].virsh("dominfo", uids[0])
    assert re.search(r"Max memory:\s+196608 KiB", dominfo), dominfo
    run("server", "resize", "confirm", uids[0])
    shown = wait_status(cloud, mode, project, uids[0], "ACTIVE")
    assert bigger in (shown["flavor"].get("name"), shown["flavor"].get("original_name"))
    g.counting(0.5)  # booted anew on its new host

    source = g.host()
    target = "host-b" if source == "host-a" else "host-a"
    before = g.uptime()
    run("server", "migrate", "--live-migration", "--host", target, "--wait", uids[0])
    wait_status(cloud, mode, project, uids[0], "ACTIVE")
    assert g.host() == target and g.domstate() == "running"
    # still counting on the target, and no boot there (its console starts with the move)
    assert g.counting(before) > before and g.boots() == 0
    # ... and back, the scheduler choosing.
    before = g.uptime()
    run("server", "migrate", "--live-migration", "--wait", uids[0])
    wait_status(cloud, mode, project, uids[0], "ACTIVE")
    assert g.host() == source and g.counting(before) > before and g.boots() == 0

    # Migrate (Nova's cold migration; a running kubenova server moves live) + confirm.
    run("server", "migrate", uids[0])
    shown = wait_status(cloud, mode, project, uids[0], "VERIFY_RESIZE")
    assert g.host() == target and g.domstate() == "running"
    assert shown["OS-EXT-STS:vm_state"] == "resized"
    run("server", "migrate", "confirm", uids[0])
    wait_status(cloud, mode, project, uids[0], "ACTIVE")

    migrations = js("server", "migration", "list")
    kinds = {m["Type"] for m in migrations if m["Server UUID"] == uids[0]}
    assert {"live-migration", "resize"} <= kinds
    run("server", "delete", "--wait", uids[0])
    run("flavor", "delete", bigger)


# ----------------------------------------------------------------------------- RBAC, restarts


def test_rbac_decides(cloud: Cloud, bed: stack.Stack, request: pytest.FixtureRequest) -> None:
    mine = next(unique_namespace(bed, request, "os-bob"))
    theirs = next(unique_namespace(bed, request, "os-alice"))
    openstackapi.grant(bed, "kubenova-openstack-member", user="bob", namespace=mine)
    # Bob cannot even scope a token to a project he has no rights in.
    status, _, body = token(cloud, BOB, theirs)
    assert status == 401 and body["error"]["code"] == 401
    status, bob_token, _ = token(cloud, BOB, mine)
    assert status == 201
    # The admin's server in the other project.
    _, admin_token, _ = token(cloud, ADMIN, theirs)
    image = cloud.json("password", theirs, "image", "show", "kubenova-guest")["id"]
    status, _, made = http(
        f"{cloud.url}/v2.1/servers", "POST",
        {"server": {"name": "private", "imageRef": image, "flavorRef": "m1.tiny"}},
        {"X-Auth-Token": admin_token},
    )  # fmt: skip
    assert status == 202
    # Bob's own project: he sees his nothing, not the other project's server.
    status, _, listing = http(f"{cloud.url}/v2.1/servers", headers={"X-Auth-Token": bob_token})
    assert status == 200 and listing == {"servers": []}
    # The other project by URL: refused (his token is scoped to his own project).
    status, _, _ = http(f"{cloud.url}/v2.1/{theirs}/servers", headers={"X-Auth-Token": bob_token})
    assert status == 400
    # With his Kubernetes token passed through: RBAC says 403.
    k8s_token = bed.cp.token("bob")
    status, _, body = http(
        f"{cloud.url}/v2.1/{theirs}/servers/detail", headers={"X-Auth-Token": k8s_token}
    )
    assert status == 403 and body["forbidden"]["code"] == 403
    status, _, body = http(
        f"{cloud.url}/v2.1/{theirs}/servers/{made['server']['id']}",
        headers={"X-Auth-Token": k8s_token},
    )
    assert status == 403
    status, _, body = http(f"{cloud.url}/v2.1/{mine}/servers", headers={"X-Auth-Token": k8s_token})
    assert status == 200 and body == {"servers": []}
    # A Keystone token login with that Kubernetes token works, for his project only.
    login = {"auth": {"identity": {"methods": ["token"], "token": {"id": k8s_token}},
                      "scope": {"project": {"name": mine}}}}  # fmt: skip
    status, _, body = http(f"{cloud.url}/identity/v3/auth/tokens", "POST", login)
    assert status == 201 and body["token"]["project"]["id"] == mine
    assert {r["name"] for r in body["token"]["roles"]} == {"reader", "member"}
    assert {e["type"] for e in body["token"]["catalog"]} == {"compute", "image", "identity"}
    login["auth"]["scope"] = {"project": {"name": theirs}}
    status, _, _ = http(f"{cloud.url}/identity/v3/auth/tokens", "POST", login)
    assert status == 401
    http(
        f"{cloud.url}/v2.1/servers/{made['server']['id']}", "DELETE",
        headers={"X-Auth-Token": admin_token},
    )  # fmt: skip


def test_a_facade_restarted_mid_request_loses_nothing(cloud: Cloud, project: str) -> None:
    """SIGKILL while requests are in flight: tokens issued before stay valid (the key is in
    a Secret), a server whose create was answered is there once, and one in the making is
    either fully there or not at all; the CLI works against the new process at once."""
    status, tok, _ = token(cloud, ADMIN, project)
    assert status == 201
    image = cloud.json("password", project, "image", "show", "kubenova-guest")["id"]
    body = json.dumps({"server": {"name": "survivor", "imageRef": image, "flavorRef": "m1.tiny",
                                  "min_count": 3, "max_count": 3}})  # fmt: skip
    inflight = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
         "-H", f"X-Auth-Token: {tok}", "-H", "Content-Type: application/json",
         "-d", body, f"{cloud.url}/v2.1/servers"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.15)
    os.kill(cloud.proc.popen.pid, signal.SIGKILL)  # type: ignore[union-attr]
    answered = inflight.communicate(timeout=60)[0]
    cloud.restart()
    status, _, listing = http(f"{cloud.url}/v2.1/servers/detail", headers={"X-Auth-Token": tok})
    assert status == 200  # the token issued before the restart
    survivors = [s for s in listing["servers"] if s["name"].startswith("survivor")]
    if answered == "202":
        assert len(survivors) == 3
    assert len(survivors) <= 3
    for s in survivors:  # each one found by id, labelled or not
        status, _, shown = http(
            f"{cloud.url}/v2.1/servers/{s['id']}", headers={"X-Auth-Token": tok}
        )
        assert status == 200 and shown["server"]["id"] == s["id"]
        http(f"{cloud.url}/v2.1/servers/{s['id']}", "DELETE", headers={"X-Auth-Token": tok})
    assert cloud.json("password", project, "server", "list") is not None
