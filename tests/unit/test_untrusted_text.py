"""Property-based tests (hypothesis): arbitrary text in every field that reaches the domain XML
or the config drive yields a well-formed document that says exactly what was put in — nothing
added, nothing lost — or, for text XML cannot carry at all, a typed refusal naming the field."""

from __future__ import annotations

import io
import json
import pathlib
import tempfile
from typing import Any

import pycdlib
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from kubenova_agent import configdrive
from kubenova_agent.libvirt import domain_xml
from kubenova_api.resources import Server

pytestmark = pytest.mark.timeout(300)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=80)
"""Any Unicode text (hypothesis leaves out lone surrogates, which no API object can hold)."""

xml_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters=[
        chr(c) for c in range(0x20) if c not in (0x9, 0xA, 0xD)
    ] + ["\ufffe", "\uffff"]),
    max_size=80,
)  # fmt: skip
"""Text XML 1.0 can carry (no C0 controls but tab, newline, carriage return)."""


def _xml_safe(value: str) -> bool:
    return all(
        c in "\t\n\r"
        or (0x20 <= ord(c) <= 0xD7FF)
        or (0xE000 <= ord(c) <= 0xFFFD)
        or ord(c) > 0xFFFF
        for c in value
    )


FIELD_OF = {
    "namespace": "owner.namespace", "name": "owner.name", "uid": "owner.uid",
    "flavor": "flavor_name", "image": "image_name", "kernel": "boot.kernel",
    "initrd": "boot.initrd", "cmdline": "boot.cmdline", "disk": "disks[0].path",
    "console": "console_log", "arch": "arch", "cpu_model": "hw:cpu_model",
    "disk_cache": "disk_cache",
}  # fmt: skip
"""Each generated value and the DomainConfig field (as InvalidText names it) it goes to."""
FIELDS = tuple(FIELD_OF)
BOOT_FIELDS = ("kernel", "initrd", "cmdline")


def _config(v: dict[str, str], boot: bool, rescue: bool) -> domain_xml.DomainConfig:
    return domain_xml.DomainConfig(
        owner=domain_xml.Owner(v["namespace"], v["name"], v["uid"]),
        virt_type=domain_xml.VirtType.kvm,
        vcpus=2,
        memory_mib=256,
        disks=(
            domain_xml.Disk(v["disk"], format="qcow2", target="vda"),
            domain_xml.Disk(v["disk"] + ".iso", format="raw", target="vdb", readonly=True),
        ),
        console_log=v["console"],
        boot=domain_xml.DirectKernelBoot(v["kernel"], v["initrd"], v["cmdline"]) if boot else None,
        flavor_name=v["flavor"],
        image_name=v["image"],
        arch=v["arch"],
        rescue=rescue,
        disk_cache=v["disk_cache"],
        cpu_xml=domain_xml.cpu_element("custom", v["cpu_model"] or "x"),
    )


def _paths(root: etree._Element) -> list[str]:
    tree = root.getroottree()
    return sorted(str(tree.getpath(el)) for el in root.iter())


def _attrs(root: etree._Element) -> list[tuple[str, str]]:
    tree = root.getroottree()
    return sorted((str(tree.getpath(el)), k) for el in root.iter() for k in el.attrib)


@PROPERTY
@given(st.fixed_dictionaries({f: xml_text for f in FIELDS}), st.booleans(), st.booleans())
def test_domain_xml_says_exactly_what_it_was_given(
    values: dict[str, str], boot: bool, rescue: bool
) -> None:
    _says_exactly(values, boot, rescue)


@PROPERTY
@given(st.fixed_dictionaries({f: text for f in FIELDS}), st.booleans())
def test_text_xml_cannot_carry_is_refused_by_name(values: dict[str, str], boot: bool) -> None:
    used = [f for f in FIELDS if boot or f not in BOOT_FIELDS]
    bad = {FIELD_OF[f] for f in used if not _xml_safe(values[f])}
    try:
        _config(values, boot, False)
        domain_xml.build_domain_xml(_config(values, boot, False))
    except domain_xml.InvalidText as exc:
        assert exc.field in bad, (exc.field, bad)  # refused only for text XML cannot carry
        event("refused")
        return
    assert not bad, f"accepted {bad}"
    event("built")
    _says_exactly(values, boot, False)


def _says_exactly(values: dict[str, str], boot: bool, rescue: bool) -> None:
    plain = {f: "x" for f in FIELDS}
    cfg = _config(values, boot, rescue)
    xml = domain_xml.build_domain_xml(cfg)
    root = etree.fromstring(xml.encode())  # well-formed
    reference = etree.fromstring(domain_xml.build_domain_xml(_config(plain, boot, rescue)).encode())
    assert _paths(root) == _paths(reference)  # the same elements ...
    assert _attrs(root) == _attrs(reference)  # ... and attributes: nothing added
    ns = {"k": domain_xml.NS}
    read = {
        "namespace": root.findtext("metadata/k:server/k:namespace", namespaces=ns),
        "name": root.findtext("metadata/k:server/k:name", namespaces=ns),
        "uid": root.findtext("metadata/k:server/k:uid", namespaces=ns),
        "flavor": root.findtext("metadata/k:server/k:flavor", namespaces=ns),
        "image": root.findtext("metadata/k:server/k:image", namespaces=ns),
        "disk": root.xpath("string(devices/disk[1]/source/@file)"),
        "console": root.xpath("string(devices/serial/source/@path)"),
        "arch": root.xpath("string(os/type/@arch)"),
        "cpu_model": root.findtext("cpu/model"),
    }
    want = {k: values[k] for k in read}
    want["cpu_model"] = values["cpu_model"] or "x"
    assert read == want
    assert root.findtext("uuid") == values["uid"]
    assert root.findtext("name") == domain_xml.domain_name(values["uid"])
    assert root.findtext("title") == f"{values['namespace']}/{values['name']}"
    assert root.xpath("string(devices/disk[1]/driver/@cache)") == values["disk_cache"]
    if boot:
        booted = [root.findtext(f"os/{tag}") for tag in ("kernel", "initrd", "cmdline")]
        assert booted == [values["kernel"], values["initrd"], values["cmdline"]]
    assert domain_xml.owner_of(xml) == cfg.owner or not values["uid"]
    assert domain_xml.is_rescue(xml) == rescue
    assert domain_xml.console_log_of(xml) == (values["console"] or None)
    assert domain_xml.disk_paths(xml) == [values["disk"], values["disk"] + ".iso"]


@PROPERTY
@given(xml_text, xml_text)
def test_a_cpu_element_carries_its_model_and_mode_verbatim(model: str, mode: str) -> None:
    cpu = etree.fromstring(domain_xml.cpu_element("custom", model or "m").encode())
    assert (cpu.get("mode"), cpu.findtext("model")) == ("custom", model or "m")
    assert [el.tag for el in cpu.iter()] == ["cpu", "model"]
    if mode == "custom":
        with pytest.raises(ValueError, match="needs a model"):
            domain_xml.cpu_element(mode)
        return
    other = etree.fromstring(domain_xml.cpu_element(mode).encode())
    assert other.get("mode") == mode and len(other) == 0


# ----------------------------------------------------------------------------- config drive


def _iso_files(path: str) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        assert iso.pvd.volume_identifier.decode().strip() == configdrive.LABEL
        found = {}
        for folder, _dirs, files in iso.walk(joliet_path="/"):
            for name in files:
                joliet = f"{folder.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, joliet_path=joliet)
                rr = io.BytesIO()
                iso.get_file_from_iso_fp(rr, rr_path=joliet)  # Rock Ridge says the same
                assert rr.getvalue() == out.getvalue()
                found[joliet.lstrip("/")] = out.getvalue()
        return found
    finally:
        iso.close()


paths = st.text(min_size=1, max_size=80).filter(lambda t: "\0" not in t).map(lambda t: "/" + t)
"""Any absolute path the schema lets through (no NUL; the API server refuses the rest)."""

servers = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries({"uid": text, "name": text, "namespace": text}),
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "userData": st.text(min_size=1, max_size=300),
                "availabilityZone": text,
                "sshKeys": st.lists(text, max_size=4),
                "files": st.lists(
                    st.fixed_dictionaries({"path": paths, "content": st.text(max_size=300)}),
                    max_size=4,
                ),
            },
        ),
    }
)


@PROPERTY
@given(servers)
def test_the_config_drive_holds_exactly_what_the_server_says(body: dict[str, Any]) -> None:
    spec = body["spec"]
    server = Server.parse({**body, "spec": {"flavorRef": "f", "imageRef": "i", **spec}})
    metadata = configdrive.metadata_of(server)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(pathlib.Path(tmp) / "config.iso")
        configdrive.write(path, metadata, server.spec)
        files = _iso_files(path)
    want = {"openstack/latest/meta_data.json", "openstack/latest/network_data.json"}
    if spec.get("userData"):
        want.add("openstack/latest/user_data")
    want |= {f"openstack/content/{i:04d}" for i in range(len(spec.get("files") or []))}
    assert set(files) == want  # nothing added
    assert json.loads(files["openstack/latest/meta_data.json"]) == metadata
    assert metadata["name"] == body["metadata"]["name"]
    assert metadata["public_keys"] == {
        f"key-{i}": k for i, k in enumerate(spec.get("sshKeys") or [])
    }
    assert [f["path"] for f in metadata["files"]] == [f["path"] for f in spec.get("files") or []]
    if spec.get("userData"):
        assert files["openstack/latest/user_data"] == spec["userData"].encode()
    for i, f in enumerate(spec.get("files") or []):
        assert files[f"openstack/content/{i:04d}"] == f["content"].encode()
