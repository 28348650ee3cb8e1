"""kubenova drives networking end to end, on three libvirtd + QEMU hosts that each have their
own network namespace on one underlay (``Stack(networking=True)``; one bed for the module):

* g1 (host-a) and g2 (host-b) on tenant Network t1 reach each other across hosts over VXLAN;
  both are configured by DHCP (t1 answers DHCP; their network_data.json says ``ipv4_dhcp``).
* g3 (host-a) on tenant Network t2 with the same CIDR and no DHCP, configured from
  network_data.json alone, reaches its own gateway but neither g1 nor g2.
* g5 (host-c) on t1 as well: a third host of the network.
* g4 on ProviderNetwork ``lan`` (the bed's LAN: each host's LAN link is the agent's physical
  network ``lan``) gets its address by DHCP and answers HTTP from the "client" namespace.
* g2 moves live from host-b to host-a while g1 pings it every 0.1 s and g5 every 0.2 s: same
  IP and MAC after the move, both still reach it, packets lost are counted (printed).
* host-c is drained: g4 and g5 move by block migration (host-c shares no storage), keep their
  addresses, g5 still reaches g2 and g4 still answers the LAN.

Traffic goes only between the bed's namespaces: guests have no route out (no egress here; the
plumbing test covers egress), and the client's route to g4 is its LAN link.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from lxml import etree

from kubenova_agent import configdrive
from kubenova_agent.libvirt import domain_xml
from kubenova_agent.network import guestdata
from kubenova_api.resources import ServerSpec
from kubenova_devenv import netutil, openstackapi, stack
from tests.conftest import eventually
from tests.e2e import helpers
from tests.e2e.helpers import FETCH, REACH

from .test_migration import migrate, wait_phase

pytestmark = [pytest.mark.libvirtd, pytest.mark.timeout(900)]

NS = "netw"
G = "compute.kubenova.io/v1alpha1"
CIDR = ipaddress.IPv4Network("192.168.100.0/24")
GATEWAY = CIDR.network_address + 1
IP = {g: str(CIDR.network_address + n) for g, n in (("g1", 11), ("g2", 12), ("g3", 13),
                                                   ("g5", 15))}  # fmt: skip


def _apply(bed: stack.Stack, *docs: dict[str, Any]) -> None:
    bed.kubectl("apply", "-f", "-", stdin="---\n".join(yaml.safe_dump(d) for d in docs))


def _server(name: str, host: str, nets: list[dict[str, Any]], script: str = "") -> dict:
    spec: dict[str, Any] = {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest",
                            "hostName": host, "networks": nets}  # fmt: skip
    if script:
        spec["userData"] = REACH + script
    return {"apiVersion": G, "kind": "Server", "metadata": {"name": name, "namespace": NS},
            "spec": spec}  # fmt: skip


class Bed:
    def __init__(self, s: stack.Stack) -> None:
        self.s = s
        self.applied_at: dict[str, float] = {}
        self.addressed_after: dict[str, float] = {}
        self.first_reply = 0.0
        """Seconds from applying g4 to its first HTTP reply on the LAN."""

    def server(self, name: str) -> dict[str, Any]:
        body = self.s.get("server", name, NS)
        assert body is not None, name
        return body

    def console(self, name: str) -> str:
        body = self.server(name)
        return self.s.console(body["status"]["nodeName"], body["metadata"]["uid"])

    def wait_console(self, name: str, pattern: str, timeout: float = 180) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.console(name))
            if match:
                found.append(match)
            return match is not None

        netutil.wait_until(seen, timeout, f"{pattern!r} on {name}'s console")
        return found[0]

    def reach(self, guest: str, target: str, timeout: float = 240) -> str:
        return self.wait_console(guest, rf"kubenova-reach {target} (ok|fail)", timeout).group(1)


def _fetch_from_client(nbed: Bed, ip: str, timeout: float = 120, step: float = 1.0) -> str:
    net = nbed.s.net
    assert net is not None
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = subprocess.run(
            ["ip", "netns", "exec", net.client, sys.executable, "-c", FETCH, f"http://{ip}/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if last.returncode == 0:
            return last.stdout.strip()
        time.sleep(step)
    return f"no answer: {last}"


@pytest.fixture(scope="module")
def nbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    s = stack.Stack(
        pathlib.Path(tmp_path_factory.mktemp("networks")),
        host_count=3,
        shared_instances=("host-a", "host-b"),
        networking=True,
    )
    with s:
        assert s.net is not None and s.net.lan is not None
        lan = s.net.lan
        s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(s.image_manifest()))
        helpers.apply(s, helpers.flavor("m1.tiny"))
        s.kubectl("create", "namespace", NS)
        pool = {"start": str(lan.network_address + 20), "end": str(lan.network_address + 40)}
        _apply(
            s,
            {"apiVersion": G, "kind": "Network", "metadata": {"name": "t1", "namespace": NS},
             "spec": {"cidr": str(CIDR)}},
            {"apiVersion": G, "kind": "Network", "metadata": {"name": "t2", "namespace": NS},
             "spec": {"cidr": str(CIDR), "dhcp": False}},
            {"apiVersion": G, "kind": "ProviderNetwork", "metadata": {"name": f"lan-{s.net.token}"},
             "spec": {"physicalNetwork": stack.LAN_PHYSNET, "cidr": str(lan),
                      "allocationPools": [pool]}},
        )  # fmt: skip
        bed = Bed(s)
        t1 = [{"networkRef": "t1", "fixedIP": IP["g1"]}]
        guests = [
            _server("g1", "host-a", t1, f"reach other-net {IP['g3']} 20 &\n"
                    f"reach g2 {IP['g2']} 180 && exec ping -i 0.1 {IP['g2']}\n"),
            _server("g2", "host-b", [{"networkRef": "t1", "fixedIP": IP["g2"]}],
                    f"reach g1 {IP['g1']} 180\n"),
            _server("g3", "host-a", [{"networkRef": "t2", "fixedIP": IP["g3"]}],
                    f"reach gateway {GATEWAY} 60 &\nreach g1 {IP['g1']} 30 &\n"
                    f"reach g2 {IP['g2']} 30 &\n"),
            _server("g4", "host-c", [{"networkRef": f"lan-{s.net.token}",
                                      "kind": "ProviderNetwork"}]),
            _server("g5", "host-c", [{"networkRef": "t1", "fixedIP": IP["g5"]}],
                    f"reach g2 {IP['g2']} 180 && exec ping -i 0.2 {IP['g2']}\n"),
        ]  # fmt: skip
        for body in guests:
            bed.applied_at[body["metadata"]["name"]] = time.monotonic()
            _apply(s, body)
        pending = set(bed.applied_at)
        while pending:
            for name in sorted(pending):
                body = s.get("server", name, NS) or {}
                if (body.get("status") or {}).get("addresses"):
                    bed.addressed_after[name] = time.monotonic() - bed.applied_at[name]
                    pending.discard(name)
            assert time.monotonic() - min(bed.applied_at.values()) < 60, pending
            time.sleep(0.2)
        g4_ip = bed.server("g4")["status"]["addresses"][0]["ip"]
        s.net.check_route(ipaddress.IPv4Address(g4_ip))
        assert _fetch_from_client(bed, g4_ip, 180, step=0.25) == "kubenova-www g4"
        bed.first_reply = time.monotonic() - bed.applied_at["g4"]
        for name in bed.applied_at:
            helpers.wait_ready(s, NS, name)
        yield bed


def test_addresses_in_status_and_column(nbed: Bed) -> None:
    print(f"apply -> address in status (s): {json.dumps(nbed.addressed_after)}")
    for name, ip in IP.items():
        (address,) = nbed.server(name)["status"]["addresses"]
        assert address["ip"] == ip and address["mac"].startswith("fa:16:3e:"), address
    table = nbed.s.kubectl("get", "srv", "-n", NS).stdout
    assert all(ip in table for ip in IP.values()), table
    t1 = nbed.s.get("network", "t1", NS)
    assert t1 is not None
    assert {h["name"] for h in t1["status"]["hosts"]} == {"host-a", "host-b", "host-c"}, t1
    assert t1["status"]["vni"] != (nbed.s.get("network", "t2", NS) or {})["status"]["vni"]


def test_tenant_network_spans_hosts(nbed: Bed) -> None:
    assert nbed.reach("g1", "g2") == "ok"
    assert nbed.reach("g2", "g1") == "ok"
    assert nbed.reach("g5", "g2") == "ok"
    times = [float(t) for t in re.findall(r"seq=\d+ ttl=\d+ time=([\d.]+) ms",
                                          nbed.console("g1"))]  # fmt: skip
    assert times, nbed.console("g1")[-2000:]
    print(f"ping g1 -> g2 across hosts: median {statistics.median(times):.2f} ms "
          f"over {len(times)}")  # fmt: skip


def test_same_cidr_on_another_tenant_network_is_isolated(nbed: Bed) -> None:
    assert nbed.reach("g3", "gateway") == "ok", "t2 itself works (its own gateway answers)"
    assert nbed.reach("g3", "g1") == "fail"
    assert nbed.reach("g3", "g2") == "fail"
    assert nbed.reach("g1", "other-net") == "fail"


def test_dhcp_and_config_drive_each_configure_a_guest(nbed: Bed) -> None:
    pattern = r"kubenova-net eth0 (\S+) mac=(\S+) gw=(\S*) mtu=(\S*) source=(\S+) uptime=(\S+)"
    for guest, source in (("g1", "dhcp"), ("g2", "dhcp"), ("g3", "config-drive"),
                          ("g4", "dhcp")):  # fmt: skip
        line = nbed.wait_console(guest, pattern, 120)
        (address,) = nbed.server(guest)["status"]["addresses"]
        assert line.group(1).split("/")[0] == address["ip"], line.group(0)
        assert line.group(2) == address["mac"] and line.group(5) == source, line.group(0)
        if guest != "g4":
            assert line.group(3) == str(GATEWAY) and line.group(4) == "1450", line.group(0)


def test_provider_network_guest_answers_the_lan(nbed: Bed) -> None:
    net = nbed.s.net
    assert net is not None and net.lan is not None
    (address,) = nbed.server("g4")["status"]["addresses"]
    ip = ipaddress.IPv4Address(address["ip"])
    assert ip in net.lan
    argv = ["ip", "-n", net.client, "-j", "route", "get", str(ip)]
    route = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)[0]
    assert route["dev"] == "eth0" and "gateway" not in route, route
    assert _fetch_from_client(nbed, str(ip)) == "kubenova-www g4"


def test_the_openstack_cli_boots_a_server_on_a_network(nbed: Bed, tmp_path: pathlib.Path) -> None:
    """``openstack server create --nic net-id=t1,v4-fixed-ip=...`` with no Neutron in the
    catalog: the CLI finds t1 through the Compute API's ``os-networks`` (as with nova-network;
    its ``network list`` no longer falls back to Compute, and says Neutron is not there),
    the Server gets its NIC on t1 with that address, the guest reaches g1 over it, and ``server
    show`` lists the address under t1. ``--nic none`` makes a Server with no NIC; a network
    that is not there, or a security group kubenova does not have, is an error and no Server.
    Through a Keystone login: without a catalog (``OS_AUTH_TYPE=none``) the CLI cannot tell
    that no Network service is there, and fails before it asks."""
    from tests.e2e.test_openstack_cli import ADMIN, NOAUTH_USER, Cloud  # noqa: PLC0415

    s = nbed.s
    openstackapi.install(s, [ADMIN])
    for user in (ADMIN.kubernetes_user, NOAUTH_USER):
        openstackapi.grant(s, "kubenova-openstack-admin", user=user)
    port = netutil.free_port()
    proc, url = openstackapi.start(s, port=port, noauth_user=NOAUTH_USER)
    cloud = Cloud(s, url, proc, port)
    user_data = tmp_path / "user-data"
    user_data.write_text(REACH + f"reach g1 {IP['g1']} 180\n")
    ip = str(CIDR.network_address + 16)
    made: list[str] = []

    def servers() -> set[str]:
        return set(s.kubectl("get", "servers", "-n", NS, "-o", "name").stdout.split())

    def by_id(uid: str) -> dict[str, Any]:
        label = f"compute.kubenova.io/server-id={uid}"
        out = s.kubectl("get", "servers", "-n", NS, "-l", label, "-o", "json").stdout
        (body,) = json.loads(out)["items"]
        return dict(body)

    try:
        boot = ("server", "create", "--flavor", "m1.tiny", "--image", "kubenova-guest")
        shown = cloud.json("password", NS, *boot, "--nic", f"net-id=t1,v4-fixed-ip={ip}",
                           "--user-data", str(user_data), "--wait", "g6")  # fmt: skip
        made.append(shown["id"])
        assert shown["status"] == "ACTIVE", shown
        body = by_id(shown["id"])
        assert body["spec"]["networks"] == [{"networkRef": "t1", "kind": "Network",
                                             "fixedIP": ip}], body["spec"]  # fmt: skip
        (address,) = body["status"]["addresses"]
        assert address["network"] == "t1" and address["ip"] == ip, address
        shown = cloud.json("password", NS, "server", "show", shown["id"])
        assert shown["addresses"] == {"t1": [ip]}, shown["addresses"]
        host, uid = body["status"]["nodeName"], body["metadata"]["uid"]
        reached = eventually(
            lambda: re.search(r"kubenova-reach g1 (ok|fail)", s.console(host, uid)), 240,
            step=1.0, what="g6 reaching g1 on its console",
        )  # fmt: skip
        assert reached.group(1) == "ok", s.console(host, uid)[-2000:]
        shown = cloud.json("password", NS, "--os-compute-api-version", "2.37", *boot,
                           "--nic", "none", "g7")  # fmt: skip
        made.append(shown["id"])
        assert by_id(shown["id"])["spec"]["networks"] == []
        before = servers()
        for wrong in (("--network", "nope"), ("--security-group", "web")):
            out = cloud.cli("password", NS, *boot, *wrong, "g8", check=False)
            assert out.returncode != 0, out
            assert "Traceback" not in out.stderr and "KeyError" not in out.stderr, out.stderr
        assert "nope not found" in cloud.cli("password", NS, *boot, "--network", "nope", "g8",
                                             check=False).stderr  # fmt: skip
        assert servers() == before
    finally:
        for uid in made:
            s.kubectl("delete", "servers", "-n", NS, "-l", f"compute.kubenova.io/server-id={uid}",
                      "--timeout=120s", timeout=150, check=False)  # fmt: skip
        proc.stop()


#: An HTTP server for the "outside": answers every GET with the address it saw the request
#: come from, and prints that address.
SEEN_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.client_address[0]
        print("peer", peer, flush=True)
        body = f"kubenova-seen {peer}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

#: Guest user data: fetch URL $1 up to $2 times, printing what the outside saw, or "fail" and
#: wget's last error (busybox's wget has no timeout of its own: busybox timeout gives one).
EGRESS = """
fetch() {
    n=0
    while [ $n -lt "$2" ]; do
        seen=$(timeout 5 wget -q -O - "$1" 2>&1) && {
            echo "kubenova-egress $seen after $n"; return 0; }
        n=$((n+1)); sleep 1
    done
    echo "kubenova-egress fail after $n: $seen"
}
"""


def test_egress_reaches_the_outside_through_snat_and_without_it_does_not(nbed: Bed) -> None:
    """ge on Network te (egress) reaches an HTTP server in an "outside" namespace on a subnet
    of its own (not the underlay, to which agents deny egress), which sees host-a's underlay
    address, never the guest's; gn on Network tn (no egress) does not reach it. The hosts'
    route to the outside is made here (on-link by their underlay link, checked with ``ip route
    get``); no namespace has a default route, and the outside has none to any guest network."""
    net = nbed.s.net
    assert net is not None
    outside, address = net.add_remote_outside()
    port = 8080
    server = subprocess.Popen(
        ["ip", "netns", "exec", outside, sys.executable, "-u", "-c", SEEN_SERVER,
         str(address), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://{address}:{port}/"
    try:
        _apply(
            nbed.s,
            {"apiVersion": G, "kind": "Network", "metadata": {"name": "te", "namespace": NS},
             "spec": {"cidr": "192.168.120.0/24", "egress": True}},
            {"apiVersion": G, "kind": "Network", "metadata": {"name": "tn", "namespace": NS},
             "spec": {"cidr": "192.168.121.0/24"}},
        )  # fmt: skip
        # gn first reaches its own gateway (its network works), so that a few tries of the
        # outside that fail say "no egress", not "not up yet".
        for name, host, network, script in (
            ("ge", "host-a", "te", f"fetch {url} 120\n"),
            ("gn", "host-b", "tn", f"reach gateway 192.168.121.1 120 && fetch {url} 3\n"),
        ):
            body = _server(name, host, [{"networkRef": network}])
            body["spec"]["userData"] = REACH + EGRESS + script
            _apply(nbed.s, body)
        seen = nbed.wait_console("ge", r"kubenova-egress (kubenova-seen (\S+)|fail)", 240)
        (ge_address,) = nbed.server("ge")["status"]["addresses"]
        host_a = str(net.hosts["host-a"].underlay_address)
        console = nbed.console("ge")[-2500:]
        assert seen.group(2) == host_a, (seen.group(0), host_a, ge_address["ip"], console)
        assert nbed.wait_console("gn", r"kubenova-reach gateway (\S+)", 240).group(1) == "ok"
        assert nbed.wait_console("gn", r"kubenova-egress (\S+)", 60).group(1) == "fail"
    finally:
        server.terminate()
        log, _ = server.communicate(timeout=30)
        nbed.s.kubectl("delete", "server", "ge", "gn", "-n", NS, "--ignore-not-found",
                       "--timeout=120s", timeout=150)  # fmt: skip
        nbed.s.kubectl("delete", "network", "te", "tn", "-n", NS, "--ignore-not-found",
                       "--timeout=120s", timeout=150)  # fmt: skip
    peers = set(re.findall(r"^peer (\S+)$", log, re.MULTILINE))
    print(f"egress: the outside {address} saw requests from {sorted(peers)} (host-a's underlay "
          f"address {host_a}; ge is {ge_address['ip']})")  # fmt: skip
    assert peers == {host_a}, log


def test_apply_to_first_tcp_reply_against_virsh_on_the_same_bridge(nbed: Bed) -> None:
    """The same guest image defined and started with virsh on host-c, on the bridge g4 uses,
    configured from network_data.json (an address outside the pool): the baseline for
    kubenova's apply -> first HTTP reply (g4, by DHCP)."""
    net, image = nbed.s.net, nbed.s.guest
    assert net is not None and net.lan is not None and image is not None
    host = nbed.s.hosts["host-c"]
    g4 = nbed.server("g4")
    g4_xml = host.virsh("dumpxml", domain_xml.domain_name(g4["metadata"]["uid"]))
    (nic,) = domain_xml.interfaces_of(g4_xml)
    virt_type = domain_xml.VirtType(etree.fromstring(g4_xml.encode()).get("type"))
    ip = net.lan.network_address + 45
    uid = str(uuid.uuid4())
    folder = nbed.s.workdir / "virsh-baseline"
    folder.mkdir(exist_ok=True)
    drive = folder / "config.iso"
    data = guestdata.Nic(port_id=uid, network_id="lan", mac="fa:16:3e:99:00:45", ip=ip,
                         cidr=net.lan, mtu=nic.mtu or 1500)  # fmt: skip
    configdrive.write(
        str(drive),
        {"uuid": uid, "name": "baseline", "hostname": "baseline", "files": [], "meta": {}},
        ServerSpec(flavorRef="m1.tiny", imageRef="kubenova-guest"),
        guestdata.network_data([data]),
    )
    cfg = domain_xml.DomainConfig(
        owner=domain_xml.Owner("bench", "baseline", uid),
        virt_type=virt_type,
        vcpus=1,
        memory_mib=128,
        disks=(domain_xml.Disk(str(drive), format="raw", target="vda", readonly=True),),
        console_log=str(folder / "console.log"),
        boot=domain_xml.DirectKernelBoot(
            str(image.kernel), str(image.ramdisk), "console=ttyS0 quiet"
        ),
        interfaces=(domain_xml.Interface(mac=data.mac, bridge=nic.bridge, mtu=nic.mtu),),
    )
    # Without kubenova's <metadata> the agent's orphan sweep leaves the domain alone.
    root = etree.fromstring(domain_xml.build_domain_xml(cfg).encode())
    for meta in root.findall("metadata"):
        root.remove(meta)
    (folder / "domain.xml").write_bytes(etree.tostring(root))
    net.check_route(ip)
    started = time.monotonic()
    host.virsh("define", str(folder / "domain.xml"))
    try:
        host.virsh("start", cfg.name)
        answer = _fetch_from_client(nbed, str(ip), 180, step=0.25)
        baseline = time.monotonic() - started
    finally:
        host.virsh("destroy", cfg.name, check=False)
        host.virsh("undefine", cfg.name, check=False)
    assert answer == "kubenova-www baseline", answer
    print(f"apply -> first TCP reply: kubenova {nbed.first_reply:.1f}s (Server applied, DHCP), "
          f"virsh define+start {baseline:.1f}s (static), same image and bridge")  # fmt: skip
    assert nbed.first_reply > 0


def _lost(text: str, interval: float) -> tuple[int, int, float]:
    """(pings sent, lost, longest gap in s) from busybox ping lines."""
    seqs = [int(s) for s in re.findall(r"seq=(\d+) ttl", text)]
    assert len(seqs) > 20, text[-2000:]
    expected = range(seqs[0], seqs[-1] + 1)
    lost = sorted(set(expected) - set(seqs))
    gap, run, prev = 0, 0, None
    for s in lost:
        run = run + 1 if prev is not None and s == prev + 1 else 1
        gap, prev = max(gap, run), s
    return len(expected), len(lost), gap * interval


def test_live_migration_keeps_address_mac_and_peers(nbed: Bed) -> None:
    assert nbed.reach("g1", "g2") == "ok" and nbed.reach("g5", "g2") == "ok"
    nbed.wait_console("g1", r"seq=\d+ ttl", 60)
    nbed.wait_console("g5", r"seq=\d+ ttl", 60)
    before = nbed.server("g2")
    uid = before["metadata"]["uid"]
    up_before = helpers.last_uptime(nbed.console("g2"))
    offsets = {g: len(nbed.console(g)) for g in ("g1", "g5")}
    started = time.monotonic()
    migrate(nbed.s, NS, "move-g2", "g2", targetNode="host-a")
    done = wait_phase(nbed.s, NS, "move-g2", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    took = time.monotonic() - started
    time.sleep(8)
    after = nbed.server("g2")
    assert after["status"]["nodeName"] == "host-a"
    assert after["status"]["addresses"] == before["status"]["addresses"]
    xml = nbed.s.hosts["host-a"].virsh("dumpxml", domain_xml.domain_name(uid))
    assert [n.mac for n in domain_xml.interfaces_of(xml)] == [
        before["status"]["addresses"][0]["mac"]
    ]
    assert helpers.last_uptime(nbed.console("g2")) > up_before, "the guest did not reboot"
    for guest, interval in (("g1", 0.1), ("g5", 0.2)):
        sent, lost, gap = _lost(nbed.console(guest)[offsets[guest] :], interval)
        print(f"live migration ({took:.1f}s incl. API): {guest} pinging every {interval}s: "
              f"{sent} sent, {lost} lost, longest gap {gap:.1f}s")  # fmt: skip
        assert lost < sent / 2, (guest, sent, lost)
        tail = nbed.console(guest)[-3000:]
        assert re.findall(r"seq=\d+ ttl", tail), f"{guest} still reaches g2: {tail}"
    # host-b runs nothing of t1 any more: it left the network and the others stop flooding there.
    t1 = nbed.s.get("network", "t1", NS)
    assert t1 is not None
    netutil.wait_until(
        lambda: (
            {h["name"] for h in (nbed.s.get("network", "t1", NS) or {})["status"]["hosts"]}
            == {"host-a", "host-c"}
        ),
        30,
        "host-b to leave t1",
    )


def test_draining_a_host_moves_its_guests_with_their_networks(nbed: Bed) -> None:
    """host-c shares no storage: its guests (g4 on the LAN, g5 on t1, pinging g2 every 0.2 s)
    move by block migration, keep their addresses, and are still reached."""
    before = {g: nbed.server(g)["status"]["addresses"] for g in ("g4", "g5")}
    uid5 = nbed.server("g5")["metadata"]["uid"]
    offset = len(nbed.console("g5"))
    # g5's console on host-c goes with it (a new one starts on the target): read it until then.
    on_c = [nbed.s.console("host-c", uid5)]

    def moved() -> bool:
        text = nbed.s.console("host-c", uid5)
        if len(text) > len(on_c[0]):
            on_c[0] = text
        return all(
            nbed.server(g)["status"].get("nodeName") != "host-c"
            and nbed.server(g)["status"].get("phase") == "ACTIVE"
            for g in ("g4", "g5")
        )

    patch = json.dumps({"spec": {"evacuate": True}})
    nbed.s.kubectl("patch", "hypervisor", "host-c", "--type", "merge", "-p", patch)
    started = time.monotonic()
    try:
        netutil.wait_until(moved, 420, "g4 and g5 to leave host-c")
        took = time.monotonic() - started
        for guest, addresses in before.items():
            assert nbed.server(guest)["status"]["addresses"] == addresses
        time.sleep(5)
        sent, lost, gap = _lost(on_c[0][offset:] + nbed.console("g5"), 0.2)
        print(f"drain of host-c ({took:.1f}s, block migrations): g5 pinging g2 every 0.2s: "
              f"{sent} sent, {lost} lost, longest gap {gap:.1f}s")  # fmt: skip
        tail = nbed.console("g5")[-3000:]
        assert re.findall(r"seq=\d+ ttl", tail), f"g5 still reaches g2: {tail}"
        assert _fetch_from_client(nbed, before["g4"][0]["ip"]) == "kubenova-www g4"
    finally:
        patch = json.dumps({"spec": {"evacuate": False}})
        nbed.s.kubectl("patch", "hypervisor", "host-c", "--type", "merge", "-p", patch)


def test_netns_hosts_run_their_own_libvirtd_and_guests(nbed: Bed) -> None:
    """libvirtd and QEMU of each host run inside its network namespace; migrations go to the
    hosts' underlay addresses."""
    net = nbed.s.net
    assert net is not None
    for name, host in nbed.s.hosts.items():
        own = os.stat(f"/run/netns/{net.hosts[name].netns}").st_ino
        assert os.stat(f"/proc/{host.pid}/ns/net").st_ino == own, name
        for pid in host.guest_pids():
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == own, (name, pid)
        hv = nbed.s.get("hypervisor", name)
        assert hv is not None
        assert hv["status"]["migration"]["address"] == str(net.hosts[name].underlay_address)
        assert hv["status"]["network"]["tunnelAddress"] == str(net.hosts[name].underlay_address)
