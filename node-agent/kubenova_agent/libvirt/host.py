"""The connection to the host's libvirt: capabilities, versions, domain events, reconnection."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import libvirt
from lxml import etree

from kubenova_agent.libvirt import _conv, domain_xml, errors

log = logging.getLogger(__name__)

LifecycleCallback = Callable[[str, str], None]
"""Called with (domain UUID, event name) from libvirt's event thread."""

_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "Defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "Undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "Started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "Suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "Resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "Stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "Shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "PMSuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "Crashed",
}

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread (once per process)."""
    global _event_loop_started  # noqa: PLW0603 - libvirt's event loop is process-wide
    with _event_loop_lock:
        if _event_loop_started:
            return
        # libvirt prints every error to stderr by default; they reach us as exceptions.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    arch: str
    model: str
    vendor: str
    features: tuple[str, ...]
    sockets: int
    cores: int
    threads: int


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What the host is, read from libvirt."""

    uuid: str
    cpu: CpuInfo
    cpus: int
    memory_mib: int
    libvirt_version: str
    hypervisor_type: str
    hypervisor_version: str
    kvm_available: bool
    guest_archs: tuple[str, ...] = ()
    firmwares: tuple[str, ...] = ()
    """bios, uefi, uefi-secure-boot: what guests of the host's own architecture can boot."""
    machine_types: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DomainSummary:
    uuid: str
    name: str
    active: bool
    owner: domain_xml.Owner | None


def _machine_types(caps: etree._Element, arch: str) -> tuple[str, ...]:
    names: set[str] = set()
    for guest_arch in caps.findall("guest/arch"):
        if guest_arch.get("name") != arch:
            continue
        for machine in guest_arch.findall("machine"):
            names.update(n for n in (machine.text, machine.get("canonical")) if n)
    return tuple(sorted(names))


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class Host:
    """One libvirt connection, reopened when it drops; lifecycle events go to ``on_event``,
    and ``on_reconnect`` is called each time a lost connection is open again."""

    def __init__(
        self,
        uri: str,
        on_event: LifecycleCallback | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.uri = uri
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    @property
    def conn(self) -> libvirt.virConnect:
        """The open connection, (re)connecting first when there is none or it died."""
        with self._lock:
            lost = False
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection to %s lost; reconnecting", self.uri)
                self._conn = None
                lost = True
            self._conn = self._open()
            conn = self._conn
        if lost:
            log.info("libvirt connection to %s open again", self.uri)
            if self._on_reconnect is not None:
                # What changed while it was lost sent no lifecycle event (a libvirtd that
                # restarted also forgot why its shut-off domains are off): look again.
                self._on_reconnect()
        return conn

    def _open(self) -> libvirt.virConnect:
        _start_event_loop()
        with _conv.translated():
            conn = libvirt.open(self.uri)
        if not self.uri.startswith("test:"):
            try:
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                log.debug("keepalive not supported on %s", self.uri)
        if self._on_event is not None:
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
        return conn

    def _lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, _detail: int, _o: None
    ) -> None:
        if self._on_event is not None:
            try:
                self._on_event(dom.UUIDString(), _EVENTS.get(event, str(event)))
            except Exception:
                log.exception("domain event handler failed")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def facts(self) -> HostFacts:
        with _conv.translated():
            conn = self.conn
            caps = etree.fromstring(conn.getCapabilities().encode())
            info = conn.getInfo()
            lib_version = conn.getLibVersion()
            hv_type = conn.getType()
            hv_version = conn.getVersion()
        cpu = caps.find("host/cpu")
        topology = cpu.find("topology") if cpu is not None else None
        features = tuple(
            sorted(str(f.get("name")) for f in (cpu.findall("feature") if cpu is not None else []))
        )
        kvm = bool(caps.xpath("guest/arch/domain[@type='kvm']"))
        arch = cpu.findtext("arch", default="") if cpu is not None else ""
        return HostFacts(
            uuid=caps.findtext("host/uuid", default=""),
            cpu=CpuInfo(
                arch=cpu.findtext("arch", default="") if cpu is not None else "",
                model=cpu.findtext("model", default="") if cpu is not None else "",
                vendor=cpu.findtext("vendor", default="") if cpu is not None else "",
                features=features,
                sockets=int(topology.get("sockets", "0")) if topology is not None else 0,
                cores=int(topology.get("cores", "0")) if topology is not None else 0,
                threads=int(topology.get("threads", "0")) if topology is not None else 0,
            ),
            cpus=int(info[2]),
            memory_mib=int(info[1]),
            libvirt_version=_version(lib_version),
            hypervisor_type=hv_type,
            hypervisor_version=_version(hv_version),
            kvm_available=kvm,
            guest_archs=tuple(sorted({str(a) for a in caps.xpath("guest/arch/@name")})),  # type: ignore[union-attr]
            firmwares=self._firmwares(arch, kvm),
            machine_types=_machine_types(caps, arch),
        )

    def _firmwares(self, arch: str, kvm: bool) -> tuple[str, ...]:
        """The firmwares libvirt offers guests of ``arch`` (from its domain capabilities and
        the host's firmware descriptors): SeaBIOS always, OVMF when installed."""
        found = ["bios"]
        try:
            with _conv.translated():
                xml = self.conn.getDomainCapabilities(None, arch, "q35", "kvm" if kvm else "qemu")
        except errors.HypervisorError as exc:
            log.info("no domain capabilities for %s (%s): BIOS only", arch, exc)
            return tuple(found)
        os_el = etree.fromstring(xml.encode()).find("os")
        if os_el is None or os_el.get("supported") != "yes":
            return tuple(found)
        firmwares = {v.text for v in os_el.findall("enum[@name='firmware']/value")}
        secure = {v.text for v in os_el.findall("loader/enum[@name='secure']/value")}
        if "efi" in firmwares:
            found.append("uefi")
            if "yes" in secure:
                found.append("uefi-secure-boot")
        return tuple(found)

    def domains(self) -> list[DomainSummary]:
        """Every domain defined or running on the host, with its kubenova owner if any."""
        out = []
        with _conv.translated():
            for dom in self.conn.listAllDomains():
                try:
                    xml = dom.XMLDesc(0)
                    active = bool(dom.isActive())
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # went away while listing
                    raise
                out.append(
                    DomainSummary(dom.UUIDString(), dom.name(), active, domain_xml.owner_of(xml))
                )
        return out

    def domain_files(self) -> list[str]:
        """Every host file a domain names — disks and their backing chains, kernels, initrds —
        in its running and its persistent definition (what the image cache must keep)."""
        found: list[str] = []
        with _conv.translated():
            for dom in self.conn.listAllDomains():
                try:
                    xmls = [dom.XMLDesc(0)]
                    if dom.isPersistent() and dom.isActive():
                        xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
                for xml in xmls:
                    found += domain_xml.host_files(xml)
        return found


__all__ = ["CpuInfo", "DomainSummary", "Host", "HostFacts", "errors"]
