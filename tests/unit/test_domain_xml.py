"""Domain XML is built from typed objects and read back; libvirt's test driver accepts it."""

from __future__ import annotations

import libvirt
import pytest
from lxml import etree

from kubenova_agent.libvirt import domain_xml

UID = "0b3f3c52-9a51-4a4a-8d3e-6c1f2d0e9b11"


def _config(**overrides: object) -> domain_xml.DomainConfig:
    values: dict = {
        "owner": domain_xml.Owner("demo", "web-1", UID),
        "virt_type": domain_xml.VirtType.qemu,
        "vcpus": 2,
        "memory_mib": 256,
        "disks": (domain_xml.Disk("/var/lib/kubenova/instances/x-root.qcow2"),),
        "console_log": "/var/lib/kubenova/consoles/x.log",
        "boot": domain_xml.DirectKernelBoot("/k", "/r", "console=ttyS0 <&>"),
    }
    values.update(overrides)
    return domain_xml.DomainConfig(**values)


def test_domain_carries_identity_size_boot_and_owner() -> None:
    xml = domain_xml.build_domain_xml(_config())
    root = etree.fromstring(xml.encode())
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == UID
    assert root.findtext("name") == f"kubenova-{UID}"
    assert root.findtext("title") == "demo/web-1"
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "256"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/k"
    assert root.findtext("os/cmdline") == "console=ttyS0 <&>"  # escaped, not formatted in
    assert root.find("devices/disk/target").get("dev") == "vda"
    assert domain_xml.owner_of(xml) == domain_xml.Owner("demo", "web-1", UID)
    assert domain_xml.console_log_of(xml) == "/var/lib/kubenova/consoles/x.log"
    assert domain_xml.disk_paths(xml) == ["/var/lib/kubenova/instances/x-root.qcow2"]


def test_disk_image_boots_from_the_disk_and_kvm_gets_host_model() -> None:
    xml = domain_xml.build_domain_xml(_config(boot=None, virt_type=domain_xml.VirtType.kvm))
    root = etree.fromstring(xml.encode())
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None
    assert root.find("cpu").get("mode") == "host-model"


def test_cpu_and_disk_cache_choices() -> None:
    custom = domain_xml.cpu_element("custom", "Westmere")
    xml = domain_xml.build_domain_xml(_config(cpu_xml=custom, disk_cache="none"))
    root = etree.fromstring(xml.encode())
    cpu = root.find("cpu")
    assert cpu.get("mode") == "custom" and cpu.get("match") == "exact"
    assert cpu.find("model").text == "Westmere" and cpu.find("model").get("fallback") == "forbid"
    assert root.find("devices/disk/driver").get("cache") == "none"
    assert domain_xml.cpu_element("host-passthrough") == '<cpu mode="host-passthrough"/>'
    with pytest.raises(ValueError):
        domain_xml.cpu_element("custom")
    baseline = (
        "<cpu mode='custom' match='exact'><model fallback='allow'>Nehalem</model>"
        "<vendor>Intel</vendor><feature policy='require' name='x2apic'/></cpu>"
    )
    guest = etree.fromstring(domain_xml.guest_cpu_of_baseline(baseline).encode())
    assert guest.findtext("model") == "Nehalem" and guest.find("model").get("fallback") == "forbid"
    assert [f.get("name") for f in guest.findall("feature")] == ["x2apic"]


def test_foreign_domains_have_no_owner() -> None:
    assert domain_xml.owner_of("<domain type='kvm'><name>x</name></domain>") is None


@pytest.mark.parametrize("boot", [True, False])
def test_libvirt_test_driver_defines_it_with_our_uuid(boot: bool) -> None:
    conn = libvirt.open("test:///default")
    try:
        cfg = _config(
            virt_type=domain_xml.VirtType.test, arch="i686", boot=_config().boot if boot else None
        )
        dom = conn.defineXML(domain_xml.build_domain_xml(cfg))
        assert dom.UUIDString() == UID
        assert domain_xml.owner_of(dom.XMLDesc(0)) == cfg.owner
        dom.undefine()
    finally:
        conn.close()


NVRAM = f"/var/lib/kubenova/instances/{UID}-nvram.fd"


@pytest.mark.parametrize(
    ("secure", "features"),
    [
        (False, [("secure-boot", "no")]),
        (True, [("secure-boot", "yes"), ("enrolled-keys", "yes")]),
        (None, []),
    ],
)
def test_uefi_asks_libvirt_for_the_firmware_with_the_servers_own_nvram(
    secure: bool | None, features: list[tuple[str, str]]
) -> None:
    fw = domain_xml.Firmware(nvram=NVRAM, secure_boot=secure)
    xml = domain_xml.build_domain_xml(_config(boot=None, firmware=fw, machine="q35"))
    root = etree.fromstring(xml.encode())
    assert root.find("os").get("firmware") == "efi"
    assert root.find("os/type").get("machine") == "q35"
    assert [(f.get("name"), f.get("enabled")) for f in root.findall("os/firmware/feature")] == (
        features
    )
    assert domain_xml.nvram_of(xml) == NVRAM
    assert root.find("os/boot").get("dev") == "hd"


def test_bios_has_no_firmware_element_and_the_host_default_machine() -> None:
    xml = domain_xml.build_domain_xml(_config(boot=None))
    root = etree.fromstring(xml.encode())
    assert root.find("os").get("firmware") is None and root.find("os/nvram") is None
    assert root.find("os/type").get("machine") is None
    assert domain_xml.nvram_of(xml) is None
    assert root.find("devices/rng") is None and root.find("devices/video") is None


def test_disk_bus_rng_and_video() -> None:
    disks = (
        domain_xml.Disk("/r.qcow2", target=domain_xml.disk_target("scsi", 0), bus="scsi"),
        domain_xml.Disk("/c.iso", format="raw", target=domain_xml.disk_target("virtio", 0)),
    )
    xml = domain_xml.build_domain_xml(_config(disks=disks, rng=True, video="virtio"))
    root = etree.fromstring(xml.encode())
    targets = [(t.get("dev"), t.get("bus")) for t in root.findall("devices/disk/target")]
    assert targets == [("sda", "scsi"), ("vda", "virtio")]
    assert root.find("devices/controller").get("model") == "virtio-scsi"
    assert root.find("devices/rng").get("model") == "virtio"
    assert root.findtext("devices/rng/backend") == "/dev/urandom"
    assert root.find("devices/video/model").get("type") == "virtio"
    none = etree.fromstring(domain_xml.build_domain_xml(_config(video="none")).encode())
    assert none.find("devices/video") is None
    assert [domain_xml.disk_target(b, 1) for b in ("virtio", "sata", "ide")] == [
        "vdb",
        "sdb",
        "hdb",
    ]
