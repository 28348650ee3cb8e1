"""Guests on real networks without kubenova's control loop: libvirtd hosts in their own network
namespaces (:mod:`.netbed`), each host's networking set by the agent's own network package
(``python -m kubenova_agent.network apply`` run inside the host), and domains defined from the
agent's own domain XML builder with a config drive carrying ``network_data.json``.

The proof that the plumbing works before the controller drives it, and the baseline the
benchmarks compare kubenova against (the same guests and bridges, moved by ``virsh``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time
import uuid

from kubenova_agent import configdrive
from kubenova_agent.libvirt import domain_xml
from kubenova_agent.network import guestdata, types
from kubenova_api.resources import ServerSpec
from kubenova_devenv import guestimage, libvirthost, netbed, netutil, scoped

#: The agent's network state folder inside a host (bind-mounted from the host's folder).
STATE_DIR = pathlib.Path("/var/lib/kubenova/network")


@dataclasses.dataclass(frozen=True)
class GuestNic:
    """A NIC of a lab guest: what libvirt attaches, and what the config drive says."""

    bridge: str
    data: guestdata.Nic


@dataclasses.dataclass
class Guest:
    name: str
    uid: str
    host: str
    console: pathlib.Path
    nics: tuple[GuestNic, ...]

    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclasses.dataclass
class NetLab(scoped.Scoped):
    workdir: pathlib.Path
    host_names: tuple[str, ...] = ("host-a", "host-b", "host-c")
    bed: netbed.NetBed = dataclasses.field(default_factory=netbed.NetBed)
    hosts: dict[str, libvirthost.LibvirtHost] = dataclasses.field(default_factory=dict)
    guests: dict[str, Guest] = dataclasses.field(default_factory=dict)
    image: guestimage.GuestImage | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.image = guestimage.build_cached()
        self.bed.start()
        for i, name in enumerate(self.host_names):
            net = self.bed.add_host(name)
            host = libvirthost.LibvirtHost(
                name,
                self.workdir / name,
                migration_port_min=49152 + 64 * i,
                netns=net.netns,
                underlay_address=str(net.underlay_address),
            )
            self.hosts[name] = host
            host.start()

    def stop(self) -> None:
        errors: list[BaseException] = []
        for name, host in self.hosts.items():
            try:
                if host.running:
                    self.apply(name, [])  # stops dnsmasq, removes namespaces and devices
            except Exception as exc:
                errors.append(exc)
            try:
                host.stop()
            except Exception as exc:
                errors.append(exc)
        self.bed.stop()
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ networks
    def host_config(self, name: str) -> types.HostConfig:
        net = self.bed.hosts[name]
        return types.HostConfig(
            host_name=name,
            underlay_device=net.underlay_device,
            underlay_address=net.underlay_address,
            interface_mappings={"lan": net.lan_device},
            state_dir=STATE_DIR,
        )

    def apply(self, name: str, plans: list[types.NetworkPlan]) -> list[str]:
        """Converge host ``name``'s networking to ``plans`` with the agent's network package,
        run inside the host; the changes it made."""
        host = self.hosts[name]
        desired = {
            "host": json.loads(self.host_config(name).model_dump_json()),
            "plans": [json.loads(p.model_dump_json()) for p in plans],
        }
        path = host.root / "network-plans.json"
        path.write_text(json.dumps(desired))
        out = subprocess.run(
            [*host.nsenter(), sys.executable, "-m", "kubenova_agent.network", "apply", str(path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"network apply on {name} failed: {out.stderr.strip()}")
        changes: list[str] = json.loads(out.stdout)["changes"]
        return changes

    def run_in(
        self, netns: str, *argv: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in one of the bed's namespaces (client, outside, a host)."""
        return subprocess.run(
            ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout
        )

    # ------------------------------------------------------------------ guests
    def boot(
        self, name: str, host_name: str, nics: list[GuestNic], user_data: str | None = None
    ) -> Guest:
        """Define and start a guest on ``host_name`` with ``nics`` and a config drive."""
        assert self.image is not None
        host = self.hosts[host_name]
        uid = str(uuid.uuid4())
        folder = self.workdir / "guests" / name
        folder.mkdir(parents=True, exist_ok=True)
        drive = folder / "config.iso"
        metadata = {"uuid": uid, "name": name, "hostname": name, "files": [], "meta": {}}
        spec = ServerSpec(flavorRef="netlab", imageRef="netlab", userData=user_data)
        configdrive.write(
            str(drive), metadata, spec, guestdata.network_data([n.data for n in nics])
        )
        console = folder / "console.log"
        cfg = domain_xml.DomainConfig(
            owner=domain_xml.Owner("netlab", name, uid),
            virt_type=domain_xml.VirtType.qemu,
            vcpus=1,
            memory_mib=128,
            disks=(domain_xml.Disk(str(drive), format="raw", target="vda", readonly=True),),
            console_log=str(console),
            boot=domain_xml.DirectKernelBoot(
                str(self.image.kernel), str(self.image.ramdisk), "console=ttyS0 quiet"
            ),
            interfaces=tuple(
                domain_xml.Interface(mac=n.data.mac, bridge=n.bridge, mtu=n.data.mtu) for n in nics
            ),
        )
        xml = folder / "domain.xml"
        xml.write_text(domain_xml.build_domain_xml(cfg))
        host.virsh("define", str(xml))
        host.virsh("start", cfg.name)
        guest = Guest(name, uid, host_name, console, tuple(nics))
        self.guests[name] = guest
        return guest

    def wait_console(self, guest: Guest, pattern: str, timeout: float = 90) -> re.Match[str]:
        """The first match of ``pattern`` on the guest's console, waited for."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, guest.text())
            if match:
                found.append(match)
            return match is not None

        netutil.wait_until(seen, timeout, f"{pattern!r} on the console of {guest.name}")
        return found[0]

    def migrate(self, guest: Guest, target: str) -> float:
        """``virsh migrate --live`` to ``target`` over its underlay address; seconds taken."""
        source = self.hosts[guest.host]
        dest = self.hosts[target]
        started = time.monotonic()
        source.virsh(
            "migrate", "--live", "--persistent", "--undefinesource",
            domain_xml.domain_name(guest.uid), dest.uri,
            "--migrateuri", f"tcp://{self.bed.hosts[target].underlay_address}",
            timeout=180,
        )  # fmt: skip
        guest.host = target
        return time.monotonic() - started
