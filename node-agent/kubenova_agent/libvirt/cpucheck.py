"""Can this host give a guest the CPU it asks for? Asked before the domain is defined, so that a
Flavor's ``hw:cpu_model`` naming a model this host's libvirt does not know (or cannot provide)
becomes a clear refusal at once, instead of a start that fails again every minute with the
reason buried in the agent's log (issue 13).

The answer comes from libvirt's domain capabilities for the guest's architecture and virt type
(``virsh domcapabilities``): which CPU modes are supported, and which named models exist and are
``usable`` here. Checked against a real libvirtd + QEMU: a model absent from that list fails to
start with "Unknown CPU model", and one listed ``usable='no'`` fails with "the CPU is
incompatible with host CPU" (both with the ``check='partial'`` kubenova writes). The admission
checks in the CRD can only judge the spelling of a model name; this is the host's judgement.
"""

from __future__ import annotations

import threading

from lxml import etree

from kubenova_agent.driver import CpuReason, CpuRefusal
from kubenova_agent.libvirt import _conv
from kubenova_agent.libvirt.host import Host


def check_guest_cpu(domain_capabilities: str, cpu_xml: str | None) -> CpuRefusal | None:
    """Whether the ``<cpu>`` element ``cpu_xml`` can run here, judged by
    ``domain_capabilities`` (the XML of ``virConnectGetDomainCapabilities``); None is fine."""
    if cpu_xml is None:
        return None  # the hypervisor's default CPU
    cpu = etree.fromstring(cpu_xml.encode())
    caps = etree.fromstring(domain_capabilities.encode())
    model = (cpu.findtext("model") or "").strip()
    mode = cpu.get("mode") or "custom"
    virt = caps.findtext("domain") or "?"
    supported = caps.xpath(f"cpu/mode[@name='{mode}']/@supported") if _plain(mode) else []
    if supported != ["yes"]:
        return CpuRefusal(
            CpuReason.unsupported_mode,
            f"CPU mode {mode} is not supported for {virt} guests on this host",
        )
    if mode != "custom" or not model:
        return None
    found = [m for m in caps.iterfind("cpu/mode[@name='custom']/model") if m.text == model]
    if not found:
        known = sorted(str(m.text) for m in caps.iterfind("cpu/mode[@name='custom']/model"))
        shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
        return CpuRefusal(
            CpuReason.unknown_model,
            f"libvirt on this host does not know CPU model {model!r} (known: {shown})",
        )
    if found[0].get("usable") == "no":
        return CpuRefusal(
            CpuReason.unusable_model,
            f"this host cannot provide every feature of CPU model {model!r} to {virt} guests",
        )
    return None


def _plain(mode: str) -> bool:
    return mode.replace("-", "").isalnum()


__all__ = ["CpuChecker", "CpuReason", "CpuRefusal", "check_guest_cpu"]


class CpuChecker:
    """:func:`check_guest_cpu` against one host's libvirt, its capabilities read once per
    (architecture, virt type) and kept: they change only with a libvirt or QEMU upgrade, which
    restarts the agent's connection anyway."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._caps: dict[tuple[str, str], str] = {}

    def capabilities(self, arch: str, virt_type: str) -> str:
        key = (arch, virt_type)
        with self._lock:
            cached = self._caps.get(key)
        if cached is not None:
            return cached
        with _conv.translated():
            xml = str(self._host.conn.getDomainCapabilities(None, arch, None, virt_type, 0))
        with self._lock:
            self._caps[key] = xml
        return xml

    def check(self, cpu_xml: str | None, arch: str, virt_type: str) -> CpuRefusal | None:
        """Raises :class:`~kubenova_agent.libvirt.errors.HypervisorError` when libvirt cannot
        be asked (the test driver has no domain capabilities: callers skip it there)."""
        if cpu_xml is None:
            return None
        return check_guest_cpu(self.capabilities(arch, virt_type), cpu_xml)
