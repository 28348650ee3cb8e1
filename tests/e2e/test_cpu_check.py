"""The CPU check predicts what a real libvirtd + QEMU does when the domain starts: every model
it refuses fails to start, every model it accepts starts (issue 13: an unknown hw:cpu_model
left its Server in BUILD with the reason only in the agent's log)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import libvirt
import pytest
from lxml import etree

from kubenova_agent.libvirt import cpucheck, domain_xml
from kubenova_agent.libvirt.host import Host
from kubenova_devenv.libvirthost import LibvirtHost

pytestmark = [pytest.mark.libvirtd, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtHost]:
    h = LibvirtHost(f"cpu-{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("cpuhost"))
    try:
        h.start()
        yield h
    finally:
        h.stop()


def starts(conn: libvirt.virConnect, cpu_xml: str) -> bool:
    dom_xml = domain_xml.build_domain_xml(
        domain_xml.DomainConfig(
            owner=domain_xml.Owner("ns", "cpu", str(uuid.uuid4())),
            virt_type=domain_xml.VirtType.qemu,
            vcpus=1,
            memory_mib=32,
            disks=(),
            console_log="/dev/null",
            cpu_xml=cpu_xml,
        )
    )
    dom = conn.defineXML(dom_xml)
    try:
        dom.create()
    except libvirt.libvirtError:
        return False
    else:
        dom.destroy()
        return True
    finally:
        dom.undefine()


def test_the_check_predicts_what_libvirt_does(host: LibvirtHost) -> None:
    kube_host = Host(host.uri)
    try:
        checker = cpucheck.CpuChecker(kube_host)
        caps = checker.capabilities("x86_64", "qemu")
        models = etree.fromstring(caps.encode()).iterfind("cpu/mode[@name='custom']/model")
        usable = [m.text for m in models if m.get("usable") == "yes"]
        unusable = [
            m.text
            for m in etree.fromstring(caps.encode()).iterfind("cpu/mode[@name='custom']/model")
            if m.get("usable") == "no"
        ]
        assert usable and unusable
        cases = {
            "unknown": domain_xml.cpu_element("custom", "Nonexistent-CPU"),
            "usable": domain_xml.cpu_element("custom", str(usable[0])),
            "unusable": domain_xml.cpu_element("custom", str(unusable[0])),
            "host-model": domain_xml.cpu_element("host-model"),
            "host-passthrough": domain_xml.cpu_element("host-passthrough"),
        }
        conn = kube_host.conn
        verdicts = {}
        for name, cpu in cases.items():
            refusal = checker.check(cpu, "x86_64", "qemu")
            verdicts[name] = (refusal.reason if refusal else None, starts(conn, cpu))
        assert verdicts["unknown"] == ("CPUModelUnknown", False), verdicts
        assert verdicts["unusable"] == ("CPUModelUnusable", False), verdicts
        assert verdicts["usable"] == (None, True), verdicts
        for name, (reason, started) in verdicts.items():
            assert (reason is None) == started, (name, verdicts)  # never a false refusal
    finally:
        kube_host.close()
