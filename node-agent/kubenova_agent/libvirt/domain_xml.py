"""Domain XML built from typed objects with lxml (never by string formatting), and read back.

A kubenova domain carries who owns it in ``<metadata>`` under :data:`NS`, so that the agent can
tell its domains from anybody else's and find the Server a domain belongs to.
"""

from __future__ import annotations

import dataclasses
import enum

from lxml import etree

NS = "https://kubenova.io/xmlns/server/v1"
NAME_PREFIX = "kubenova-"


class VirtType(enum.StrEnum):
    kvm = "kvm"
    qemu = "qemu"
    test = "test"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The Server a domain belongs to."""

    namespace: str
    name: str
    uid: str


@dataclasses.dataclass(frozen=True)
class Disk:
    path: str
    format: str = "qcow2"
    target: str = "vda"
    readonly: bool = False
    device: str = "disk"
    bus: str = "virtio"


@dataclasses.dataclass(frozen=True)
class Interface:
    """A NIC on a host bridge (Nova's ``LibvirtConfigGuestInterface`` for a linuxbridge VIF)."""

    mac: str
    bridge: str
    mtu: int | None = None
    """The MTU the guest sees (1450 on a VXLAN overlay); None leaves the bridge's."""
    model: str = "virtio"


@dataclasses.dataclass(frozen=True)
class DirectKernelBoot:
    kernel: str
    initrd: str
    cmdline: str


@dataclasses.dataclass(frozen=True)
class Firmware:
    """UEFI (OVMF, chosen by libvirt from the host's firmware descriptors) with a variable
    store of the Server's own: libvirt copies it from the firmware's template on first start
    and keeps it after that (stop/start, redefinition)."""

    nvram: str
    secure_boot: bool | None = False
    """True: the secure-boot firmware with enrolled keys; False: a firmware without secure
    boot; None: whichever the host prefers (Nova's ``os_secure_boot: optional``)."""


@dataclasses.dataclass(frozen=True)
class DomainConfig:
    """Everything a domain is made of."""

    owner: Owner
    virt_type: VirtType
    vcpus: int
    memory_mib: int
    disks: tuple[Disk, ...]
    console_log: str
    boot: DirectKernelBoot | None = None
    flavor_name: str = ""
    image_name: str = ""
    arch: str = "x86_64"
    rescue: bool = False
    disk_cache: str | None = None
    """The disks' cache mode (``none`` on shared storage such as NFS or Ceph, where libvirt
    requires it for a safe live migration); None leaves QEMU's default."""
    cpu_xml: str | None = None
    """A whole ``<cpu>`` element; None gives kvm guests host-model and qemu guests the
    hypervisor's default model."""
    interfaces: tuple[Interface, ...] = ()
    """NICs in the guest's order (the first is the guest's eth0)."""
    firmware: Firmware | None = None
    """UEFI; None is BIOS (SeaBIOS)."""
    machine: str | None = None
    """QEMU machine type (``pc``, ``q35``, ``pc-q35-7.2``); None is the host's default."""
    rng: bool = False
    """A virtio RNG fed by the host's /dev/urandom."""
    video: str | None = None
    """A video device model (``vga``, ``virtio``, ...); None or ``none``: no video device."""

    @property
    def name(self) -> str:
        return domain_name(self.owner.uid)


class InvalidText(ValueError):
    """A value that XML 1.0 cannot carry at all (NUL, another control character, U+FFFE/F):
    the domain cannot be written, so say which field holds it rather than fail in lxml."""

    def __init__(self, field: str, position: int, char: str) -> None:
        super().__init__(
            f"{field} holds a character XML cannot carry ({char!r} at position {position})"
        )
        self.field = field


def _xml_char(c: str) -> bool:
    n = ord(c)
    return c in "\t\n\r" or 0x20 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD or n >= 0x10000


def check_text(field: str, value: str) -> str:
    """``value`` if XML can carry it, else :class:`InvalidText` naming ``field``."""
    for i, c in enumerate(value):
        if not _xml_char(c):
            raise InvalidText(field, i, c)
    return value


def check_config(cfg: DomainConfig) -> None:
    """Every text of ``cfg`` that goes into the domain XML, checked (see :class:`InvalidText`)."""
    fields = {
        "owner.namespace": cfg.owner.namespace,
        "owner.name": cfg.owner.name,
        "owner.uid": cfg.owner.uid,
        "flavor_name": cfg.flavor_name,
        "image_name": cfg.image_name,
        "console_log": cfg.console_log,
        "arch": cfg.arch,
        "disk_cache": cfg.disk_cache or "",
    }
    if cfg.boot is not None:
        fields |= {
            "boot.kernel": cfg.boot.kernel,
            "boot.initrd": cfg.boot.initrd,
            "boot.cmdline": cfg.boot.cmdline,
        }
    for i, disk in enumerate(cfg.disks):
        fields |= {f"disks[{i}].{k}": getattr(disk, k) for k in ("path", "format", "target")}
        fields[f"disks[{i}].device"] = disk.device
    for field, value in fields.items():
        check_text(field, value)


def domain_name(uid: str) -> str:
    """The libvirt name of a Server's domain: unique per Server and never reused."""
    return f"{NAME_PREFIX}{uid}"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build_domain_xml(cfg: DomainConfig) -> str:
    """The domain XML of ``cfg``; :class:`InvalidText` when a value cannot be XML."""
    check_config(cfg)
    dom = etree.Element("domain", type=cfg.virt_type.value)
    _sub(dom, "name", cfg.name)
    _sub(dom, "uuid", cfg.owner.uid)
    _sub(dom, "title", f"{cfg.owner.namespace}/{cfg.owner.name}")
    meta = _sub(dom, "metadata")
    inst = etree.SubElement(meta, f"{{{NS}}}server", nsmap={"kubenova": NS})
    _sub(inst, f"{{{NS}}}namespace", cfg.owner.namespace)
    _sub(inst, f"{{{NS}}}name", cfg.owner.name)
    _sub(inst, f"{{{NS}}}uid", cfg.owner.uid)
    _sub(inst, f"{{{NS}}}flavor", cfg.flavor_name)
    _sub(inst, f"{{{NS}}}image", cfg.image_name)
    if cfg.rescue:
        _sub(inst, f"{{{NS}}}rescue", "true")
    _sub(dom, "memory", str(cfg.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(cfg.vcpus))
    os_el = _sub(dom, "os")
    type_el = _sub(os_el, "type", "hvm", arch=cfg.arch)
    if cfg.machine is not None:
        type_el.set("machine", cfg.machine)
    if cfg.firmware is not None:
        os_el.set("firmware", "efi")
        if cfg.firmware.secure_boot is not None:
            # Without this libvirt picks the secure-boot firmware on q35, which refuses
            # unsigned boot loaders; with it on, the firmware must also have enrolled keys.
            fw = etree.Element("firmware")
            os_el.insert(1, fw)  # after <type>
            on = "yes" if cfg.firmware.secure_boot else "no"
            _sub(fw, "feature", enabled=on, name="secure-boot")
            if cfg.firmware.secure_boot:
                _sub(fw, "feature", enabled="yes", name="enrolled-keys")
        _sub(os_el, "nvram", cfg.firmware.nvram)
    if cfg.boot is not None:
        _sub(os_el, "kernel", cfg.boot.kernel)
        _sub(os_el, "initrd", cfg.boot.initrd)
        _sub(os_el, "cmdline", cfg.boot.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
        if cfg.firmware is None:
            # SeaBIOS on the serial console too: "No bootable device" is seen there.
            _sub(os_el, "bios", useserial="yes")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if cfg.cpu_xml is not None:
        dom.append(etree.fromstring(cfg.cpu_xml.encode()))
    elif cfg.virt_type is VirtType.kvm:
        _sub(dom, "cpu", mode="host-model")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    if any(disk.bus == "scsi" for disk in cfg.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for disk in cfg.disks:
        d = _sub(devices, "disk", type="file", device=disk.device)
        driver = _sub(d, "driver", name="qemu", type=disk.format)
        if cfg.disk_cache is not None and not disk.readonly:
            driver.set("cache", cfg.disk_cache)
        _sub(d, "source", file=disk.path)
        _sub(d, "target", dev=disk.target, bus=disk.bus)
        if disk.readonly:
            _sub(d, "readonly")
    for nic in cfg.interfaces:
        devices.append(interface_element(nic))
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=cfg.console_log, append="on")
    _sub(serial, "target", port="0")
    if cfg.rng:
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")
    if cfg.video is not None and cfg.video != "none":
        video = _sub(devices, "video")
        _sub(video, "model", type=cfg.video)
    _sub(devices, "memballoon", model="none")
    return etree.tostring(dom, pretty_print=True, encoding="unicode")


def interface_element(nic: Interface) -> etree._Element:
    """``<interface type='bridge'>``: the guest's NIC with its MAC, on ``nic.bridge``."""
    el = etree.Element("interface", type="bridge")
    _sub(el, "mac", address=nic.mac)
    _sub(el, "source", bridge=nic.bridge)
    _sub(el, "model", type=nic.model)
    if nic.mtu is not None:
        _sub(el, "mtu", size=str(nic.mtu))
    return el


def interfaces_of(xml: str) -> list[Interface]:
    """The bridge NICs of a domain, in order (as :func:`interface_element` wrote them)."""
    root = etree.fromstring(xml.encode())
    found = []
    for el in root.iterfind("devices/interface[@type='bridge']"):
        mtu = el.find("mtu")
        found.append(
            Interface(
                mac=str(el.find("mac").get("address", "")),  # type: ignore[union-attr]
                bridge=str(el.find("source").get("bridge", "")),  # type: ignore[union-attr]
                mtu=int(mtu.get("size", "0")) if mtu is not None else None,
                model=str(el.find("model").get("type", "virtio"))  # type: ignore[union-attr]
                if el.find("model") is not None
                else "virtio",
            )
        )
    return found


def owner_of(xml: str) -> Owner | None:
    """The Server a domain belongs to, or None for a domain kubenova does not own."""
    root = etree.fromstring(xml.encode())
    ns = {"k": NS}
    uid = root.findtext("metadata/k:server/k:uid", namespaces=ns)
    if not uid:
        return None
    return Owner(
        namespace=root.findtext("metadata/k:server/k:namespace", default="", namespaces=ns),
        name=root.findtext("metadata/k:server/k:name", default="", namespaces=ns),
        uid=uid,
    )


def image_of(xml: str) -> str | None:
    """The name of the Image the domain was built from."""
    root = etree.fromstring(xml.encode())
    return root.findtext("metadata/k:server/k:image", namespaces={"k": NS}) or None


def is_rescue(xml: str) -> bool:
    """Whether the domain is the rescue form of its Server."""
    root = etree.fromstring(xml.encode())
    return root.findtext("metadata/k:server/k:rescue", namespaces={"k": NS}) == "true"


def console_log_of(xml: str) -> str | None:
    """The file the domain's first serial port writes to, if it is a file."""
    root = etree.fromstring(xml.encode())
    path = root.xpath("string(devices/serial[@type='file']/source/@path)")
    return str(path) or None


def nvram_of(xml: str) -> str | None:
    """The domain's UEFI variable store, if it has one."""
    root = etree.fromstring(xml.encode())
    return root.findtext("os/nvram") or None


def disk_target(bus: str, index: int) -> str:
    """The device name of the ``index``-th disk (from 0) on ``bus``: vda, sdb, hdc, ..."""
    prefix = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}[bus]
    return f"{prefix}{chr(ord('a') + index)}"


def disk_paths(xml: str) -> list[str]:
    """Paths of the domain's file-backed disks."""
    root = etree.fromstring(xml.encode())
    found = root.xpath("devices/disk/source/@file")
    assert isinstance(found, list)
    return [str(p) for p in found]


def host_files(xml: str) -> list[str]:
    """Every host file the domain XML names: disk sources and their backing chains (as libvirt
    reports them in a running domain's XML), the kernel and the initrd."""
    root = etree.fromstring(xml.encode())
    found = root.xpath("os/kernel/text() | os/initrd/text() | devices/disk//source/@file")
    assert isinstance(found, list)
    return sorted({str(p) for p in found})


def cpu_element(mode: str, model: str | None = None) -> str:
    """A ``<cpu>`` element: ``host-model``, ``host-passthrough``, or ``custom`` with ``model``
    (``fallback='forbid'``: the guest gets that model or does not start)."""
    if mode == "custom":
        if not model:
            raise ValueError("a custom CPU needs a model")
        cpu = etree.Element("cpu", mode="custom", match="exact", check="partial")
        _sub(cpu, "model", check_text("hw:cpu_model", model), fallback="forbid")
    else:
        cpu = etree.Element("cpu", mode=check_text("hw:cpu_mode", mode))
    return etree.tostring(cpu, encoding="unicode")


def guest_cpu_of_baseline(baseline: str) -> str:
    """The ``<cpu>`` a guest gets from libvirt's baseline of several hosts' CPUs."""
    root = etree.fromstring(baseline.encode())
    cpu = etree.Element("cpu", mode="custom", match="exact", check="partial")
    for child in root:
        if child.tag in ("model", "vendor", "feature"):
            if child.tag == "model":
                child.set("fallback", "forbid")
            cpu.append(child)
    return etree.tostring(cpu, encoding="unicode")
