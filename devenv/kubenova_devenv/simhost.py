"""Simulated hosts on libvirt's test driver: no daemon, domains in memory, one private state
per connection when the URI names a host description file (``test:///path/host.xml``)."""

from __future__ import annotations

import pathlib

from lxml import etree


def host_names(prefix: str, count: int) -> list[str]:
    """The names simfleet gives its ``count`` hosts with ``--prefix prefix``."""
    return [f"{prefix}-{i:03d}" for i in range(count)]


def write_host_file(path: pathlib.Path, cpus: int = 8, memory_mib: int = 16384) -> str:
    """Describe a host with ``cpus`` CPUs and ``memory_mib`` of memory; returns its URI."""
    node = etree.Element("node")
    cpu = etree.SubElement(node, "cpu")
    for tag, value in (
        ("mhz", "2000"), ("model", "x86_64"), ("nodes", "1"), ("sockets", "1"),
        ("cores", str(cpus)), ("threads", "1"),
    ):  # fmt: skip
        etree.SubElement(cpu, tag).text = value
    etree.SubElement(node, "memory").text = str(memory_mib * 1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(etree.tostring(node, pretty_print=True))
    return f"test://{path.resolve()}"
