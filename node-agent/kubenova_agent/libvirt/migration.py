"""Live migration through libvirt: CPU comparison and baselines, the peer-to-peer migration
itself, its job statistics, and the knobs a running migration has (abort, post-copy, pause).

The migration is peer-to-peer (``VIR_MIGRATE_PEER2PEER``): the source libvirtd talks to the
target libvirtd itself, so the agent only starts it and watches it. The domain is made
persistent on the target; the source keeps its (now inactive) definition until the agent has
read the final statistics and undefines it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import libvirt
from lxml import etree

from kubenova_agent.driver import JobStats, Options
from kubenova_agent.libvirt import _conv, errors, storage
from kubenova_agent.libvirt.host import Host

log = logging.getLogger(__name__)


COPY_CHUNK = 4 << 20


def _raw_volume_xml(name: str, capacity_bytes: int) -> str:
    vol = etree.Element("volume")
    etree.SubElement(vol, "name").text = name
    etree.SubElement(vol, "capacity", unit="bytes").text = str(capacity_bytes)
    etree.SubElement(etree.SubElement(vol, "target"), "format", type="raw")
    return etree.tostring(vol, encoding="unicode")


class CpuIncompatible(errors.HypervisorError):
    """This host cannot run the guest's CPU."""


class Migrations:
    """Migration operations on one host (:class:`kubenova_agent.driver.Migrations`)."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def _domain(self, uuid: str) -> libvirt.virDomain:
        try:
            return self._host.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            raise _conv.convert(exc) from exc

    # ------------------------------------------------------------------ CPU
    def guest_cpu(self, uuid: str) -> tuple[str | None, str]:
        """The running guest's CPU definition (``<cpu>`` of its live XML, as libvirt expanded
        it at start) and its architecture."""
        with _conv.translated():
            root = etree.fromstring(self._domain(uuid).XMLDesc(0).encode())
        arch = str(root.xpath("string(os/type/@arch)")) or "x86_64"
        cpu = root.find("cpu")
        if cpu is None:
            return None, arch
        return etree.tostring(cpu, encoding="unicode"), arch

    def compare_cpu(self, cpu_xml: str, arch: str, virt_type: str) -> tuple[bool, str]:
        """Whether this host's hypervisor can run a guest with ``cpu_xml`` (libvirt's
        ``compareHypervisorCPU`` for the virt type the agent uses), and libvirt's words."""
        try:
            result = self._host.conn.compareHypervisorCPU(None, arch, None, virt_type, cpu_xml, 0)
        except libvirt.libvirtError as exc:
            return False, f"libvirt on this host cannot run the guest's CPU: {exc}"
        if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
            model = _model(cpu_xml)
            return False, (
                f"the guest's CPU ({model}) is not a subset of the CPU this host's hypervisor "
                "provides"
            )
        if result == libvirt.VIR_CPU_COMPARE_ERROR:
            return False, "libvirt could not compare the CPUs"
        how = "identical to" if result == libvirt.VIR_CPU_COMPARE_IDENTICAL else "a subset of"
        return True, f"the guest's CPU ({_model(cpu_xml)}) is {how} this host's"

    def host_model_cpu(self, virt_type: str, arch: str = "x86_64") -> str | None:
        """The CPU this host offers guests of ``virt_type`` (the domain capabilities'
        host-model), as ``<cpu mode='custom'>`` XML usable for comparisons and baselines."""
        try:
            caps = self._host.conn.getDomainCapabilities(None, arch, None, virt_type, 0)
        except libvirt.libvirtError as exc:
            log.debug("no domain capabilities for %s/%s: %s", virt_type, arch, exc)
            return None
        root = etree.fromstring(caps.encode())
        mode = root.find("cpu/mode[@name='host-model']")
        if mode is None or mode.get("supported") != "yes" or mode.find("model") is None:
            return None
        cpu = etree.Element("cpu", mode="custom", match="exact")
        for child in mode:
            if child.tag in ("model", "vendor", "feature"):
                cpu.append(child)
        return etree.tostring(cpu, encoding="unicode")

    def baseline(self, cpus: list[str], virt_type: str, arch: str = "x86_64") -> str:
        """The most capable CPU every one of ``cpus`` can run (libvirt's
        ``baselineHypervisorCPU``, migratable features only)."""
        with _conv.translated():
            out = self._host.conn.baselineHypervisorCPU(
                None, arch, None, virt_type, cpus, libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
            )
        return str(out)

    # ------------------------------------------------------------------ the move
    def migrate(self, uuid: str, opts: Options) -> None:
        """Run the live migration to completion (blocks; abort it from another thread)."""
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
        )
        params: dict[str, object] = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{opts.address}"}
        if opts.block:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = opts.address
        else:
            # The caller has proved the storage shared (a file written on one host seen on
            # the other); libvirt cannot tell a shared local folder from a private one.
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        if opts.bandwidth_mibps:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = opts.bandwidth_mibps
        if opts.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if opts.post_copy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        with _conv.translated():
            self._domain(uuid).migrateToURI3(opts.dest_uri, params, flags)

    def copy_volume(
        self,
        pool_name: str,
        name: str,
        dest_uri: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Copy volume ``name`` byte for byte into the volume of the same name in the pool of
        the same name on the libvirtd at ``dest_uri`` (libvirt's volume download and upload
        streams: a cold migration's disk copy), made there as a raw volume of the same size if
        the target has none (a UEFI variable store, which only libvirt creates). Returns the
        bytes copied."""
        copied = 0
        with _conv.translated():
            src = self._host.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
            dest_conn = libvirt.open(dest_uri)
            try:
                dest_pool = dest_conn.storagePoolLookupByName(pool_name)
                storage.refresh(dest_pool)
                try:
                    dest = dest_pool.storageVolLookupByName(name)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                        raise
                    dest = dest_pool.createXML(_raw_volume_xml(name, int(src.info()[1])), 0)
                down = self._host.conn.newStream(0)
                up = dest_conn.newStream(0)
                src.download(down, 0, 0, 0)
                dest.upload(up, 0, 0, 0)
                try:
                    while True:
                        data = down.recv(COPY_CHUNK)
                        if not data:
                            break
                        up.send(data)
                        copied += len(data)
                        if on_bytes is not None:
                            on_bytes(copied)
                    down.finish()
                    up.finish()
                except BaseException:
                    for stream in (down, up):
                        try:
                            stream.abort()
                        except libvirt.libvirtError:
                            pass
                    raise
                storage.refresh(dest_pool)
            finally:
                dest_conn.close()
        return copied

    def stats(self, uuid: str) -> JobStats | None:
        """The running job's figures, or None when the domain has no job."""
        try:
            raw = self._domain(uuid).jobStats(0)
        except (libvirt.libvirtError, errors.HypervisorError):
            return None
        if raw.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return JobStats.of(raw)

    def completed_stats(self, uuid: str) -> JobStats | None:
        """The figures of the domain's last completed job (with the downtime)."""
        try:
            raw = self._domain(uuid).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except (libvirt.libvirtError, errors.HypervisorError):
            return None
        if raw.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return JobStats.of(raw)

    def abort(self, uuid: str) -> bool:
        """Abort the domain's migration job; False when there was none to abort."""
        try:
            self._domain(uuid).abortJob()
            return True
        except (libvirt.libvirtError, errors.HypervisorError) as exc:
            log.info("abortJob on %s: %s", uuid, exc)
            return False

    def start_post_copy(self, uuid: str) -> None:
        with _conv.translated():
            self._domain(uuid).migrateStartPostCopy(0)

    def arrived(self, uuid: str) -> bool:
        """Whether an incoming guest has fully arrived: the domain is active and persistent
        (libvirt makes it persistent only when the migration finishes)."""
        try:
            dom = self._domain(uuid)
            state, reason = dom.state()
            incoming = (
                state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION
            )
            return bool(dom.isActive() and dom.isPersistent() and not incoming)
        except (libvirt.libvirtError, errors.HypervisorError):
            return False

    def migrated_away(self, uuid: str) -> bool:
        """Whether the domain is shut off because it migrated to another host."""
        try:
            state, reason = self._domain(uuid).state()
        except (libvirt.libvirtError, errors.HypervisorError):
            return False
        return bool(
            state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED
        )

    def peer_running(self, uri: str, uuid: str) -> bool | None:
        """Whether the domain runs on the libvirtd at ``uri`` (None when unreachable)."""
        return peer_running(uri, uuid)


def _model(cpu_xml: str) -> str:
    try:
        root = etree.fromstring(cpu_xml.encode())
    except etree.XMLSyntaxError:
        return "?"
    return root.findtext("model") or root.get("mode") or "default"


def peer_running(uri: str, uuid: str) -> bool | None:
    """Whether the domain runs on the libvirtd at ``uri`` (None when it cannot be reached)."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return None
    try:
        try:
            return bool(conn.lookupByUUIDString(uuid).isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            return None
    finally:
        conn.close()
