"""Fakes of kubenova's own small contracts — the driver (:mod:`kubenova_agent.driver`: guests,
storage, migrations), the image cache and the Kubernetes calls — as plain data in memory, so
the agent's decisions (power states, status reports, migration recovery) are tested in
milliseconds. They fake kubenova's contracts, not libvirt or the API server: the end-to-end
tests on real libvirtd and a real kube-apiserver stay the proof."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

from kubenova_agent import images
from kubenova_agent.driver import (
    Backing,
    GuestInfo,
    JobStats,
    Options,
    PoolUsage,
    State,
    StopReason,
)
from kubenova_agent.libvirt import domain_xml, errors
from kubenova_api.common import KubeObject, StatusModel
from kubenova_api.kube import ObjectRef

Obj = TypeVar("Obj", bound=KubeObject)


# ----------------------------------------------------------------------------- guests


@dataclasses.dataclass
class FakeGuests:
    """Domains in a dict. ``answers_acpi`` says whether a guest powers off when its power
    button is pressed (at once); with ``answers_acpi=False`` it ignores the button until a
    test calls :meth:`stops_by_itself`."""

    domains: dict[str, GuestInfo] = dataclasses.field(default_factory=dict)
    answers_acpi: bool = True
    fail: dict[str, errors.HypervisorError] = dataclasses.field(default_factory=dict)
    """Calls that fail, by method name (``{"start": HypervisorError("…")}``)."""
    calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def _set(self, uuid: str, state: State, reason: StopReason | None = None) -> None:
        self.domains[uuid] = dataclasses.replace(
            self.domains[uuid], state=state, stop_reason=reason
        )

    def _need(self, uuid: str) -> GuestInfo:
        if uuid not in self.domains:
            raise errors.DomainNotFound(f"no domain with UUID {uuid}")
        return self.domains[uuid]

    def get(self, uuid: str) -> GuestInfo | None:
        return self.domains.get(uuid)

    def define(self, xml: str) -> None:
        owner = domain_xml.owner_of(xml)
        assert owner is not None
        self.calls.append(("define", owner.uid))
        if "define" in self.fail:
            raise self.fail["define"]
        old = self.domains.get(owner.uid)
        state = old.state if old is not None else State.shutoff
        reason = old.stop_reason if old is not None else StopReason.never_started
        name = domain_xml.domain_name(owner.uid)
        self.domains[owner.uid] = GuestInfo(owner.uid, name, state, xml, reason)

    def start(self, uuid: str) -> None:
        self.calls.append(("start", uuid))
        if "start" in self.fail:
            raise self.fail["start"]
        if self._need(uuid).state is not State.running:
            self._set(uuid, State.running)

    def destroy(self, uuid: str, force: bool = False) -> None:
        self.calls.append(("destroy", uuid))
        guest = self.domains.get(uuid)
        if guest is not None and guest.alive:
            self._set(uuid, State.shutoff, StopReason.destroyed)

    def request_shutdown(self, uuid: str) -> bool:
        self.calls.append(("request_shutdown", uuid))
        if self._need(uuid).state is not State.running:
            return True
        if self.answers_acpi:
            self._set(uuid, State.shutoff, StopReason.shutdown)
        return self.answers_acpi

    def pause(self, uuid: str) -> None:
        self.calls.append(("pause", uuid))
        self._need(uuid)
        self._set(uuid, State.paused)

    def unpause(self, uuid: str) -> None:
        self.calls.append(("unpause", uuid))
        if self._need(uuid).state is State.paused:
            self._set(uuid, State.running)

    def save(self, uuid: str) -> None:
        self.calls.append(("save", uuid))
        if self._need(uuid).alive:
            self._set(uuid, State.suspended)

    def discard_saved(self, uuid: str) -> None:
        self.calls.append(("discard_saved", uuid))
        if self._need(uuid).state is State.suspended:
            self._set(uuid, State.shutoff, StopReason.destroyed)

    def undefine(self, uuid: str) -> None:
        self.calls.append(("undefine", uuid))
        self.domains.pop(uuid, None)

    def stops_by_itself(self, uuid: str, reason: StopReason) -> None:
        """What a guest does on its own: powers off, crashes."""
        self._set(uuid, State.shutoff, reason)


# ----------------------------------------------------------------------------- storage


@dataclasses.dataclass
class FakeStorage:
    """Volumes as files in a folder (so the config drive really is written)."""

    folder: pathlib.Path
    pool_name: str = "kubenova"
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)

    def ensure_pool(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def usage(self) -> PoolUsage:
        return PoolUsage(
            100 << 30, sum(self.sizes.values()), (100 << 30) - sum(self.sizes.values())
        )

    def ensure_volume(self, name: str, capacity_bytes: int, backing: Backing | None) -> str:
        self.sizes.setdefault(name, capacity_bytes)
        return str(self.folder / name)

    def ensure_file_volume(self, name: str, write: Callable[[str], None]) -> str:
        path = self.folder / name
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write(str(path))
        self.sizes[name] = path.stat().st_size
        return str(path)

    def volumes(self, prefix: str) -> list[tuple[str, int]]:
        return [(n, s) for n, s in sorted(self.sizes.items()) if n.startswith(prefix)]

    def grow_volume(self, name: str, capacity_bytes: int) -> bool:
        if self.sizes.get(name, 0) >= capacity_bytes:
            return False
        self.sizes[name] = capacity_bytes
        return True

    def delete_volumes(self, prefix: str) -> list[str]:
        gone = [n for n in self.sizes if n.startswith(prefix)]
        for name in gone:
            del self.sizes[name]
            (self.folder / name).unlink(missing_ok=True)
        return gone

    def backing_files(self) -> list[str]:
        return []


# ----------------------------------------------------------------------------- images


@dataclasses.dataclass
class FakeImages:
    """An image cache whose "downloads" write ``contents[url]`` (checked like the real one)."""

    folder: pathlib.Path
    contents: dict[str, bytes] = dataclasses.field(default_factory=dict)
    fetched: list[str] = dataclasses.field(default_factory=list)

    def path_of(self, sha256: str) -> pathlib.Path:
        return self.folder / sha256

    def ensure(self, url: str, sha256: str, kind: str) -> pathlib.Path:
        path = self.path_of(sha256)
        if not path.exists():
            data = self.contents[url]
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise images.ChecksumMismatch(url, sha256, actual)
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.fetched.append(url)
        return path


# ----------------------------------------------------------------------------- migrations


@dataclasses.dataclass
class FakeMigrations:
    """What the migration roles ask of the hypervisor, answered from fields a test sets."""

    running_job: JobStats | None = None
    away: set[str] = dataclasses.field(default_factory=set)
    arrived_here: set[str] = dataclasses.field(default_factory=set)
    peer: dict[tuple[str, str], bool | None] = dataclasses.field(default_factory=dict)
    cpu_ok: bool = True
    aborted: list[str] = dataclasses.field(default_factory=list)

    def guest_cpu(self, uuid: str) -> tuple[str | None, str]:
        return "<cpu mode='custom'><model>qemu64</model></cpu>", "x86_64"

    def compare_cpu(self, cpu_xml: str, arch: str, virt_type: str) -> tuple[bool, str]:
        if self.cpu_ok:
            return True, "the guest's CPU (qemu64) is a subset of this host's"
        return False, "the guest's CPU (qemu64) is not a subset of the CPU this host provides"

    def host_model_cpu(self, virt_type: str, arch: str = "x86_64") -> str | None:
        return None

    def baseline(self, cpus: list[str], virt_type: str, arch: str = "x86_64") -> str:
        return cpus[0]

    def migrate(self, uuid: str, opts: Options) -> None:
        self.away.add(uuid)

    def copy_volume(
        self,
        pool_name: str,
        name: str,
        dest_uri: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        return 0

    def stats(self, uuid: str) -> JobStats | None:
        return self.running_job

    def completed_stats(self, uuid: str) -> JobStats | None:
        return None

    def abort(self, uuid: str) -> bool:
        self.aborted.append(uuid)
        return self.running_job is not None

    def start_post_copy(self, uuid: str) -> None:
        pass

    def arrived(self, uuid: str) -> bool:
        return uuid in self.arrived_here

    def migrated_away(self, uuid: str) -> bool:
        return uuid in self.away

    def peer_running(self, uri: str, uuid: str) -> bool | None:
        return self.peer.get((uri, uuid))


# ----------------------------------------------------------------------------- Kubernetes


@dataclasses.dataclass
class Write:
    ref: ObjectRef
    status: dict[str, Any]
    force: bool


@dataclasses.dataclass
class FakeKube:
    """Objects by (plural, namespace, name); status writes and Events recorded in order."""

    objects: dict[tuple[str, str, str], KubeObject] = dataclasses.field(default_factory=dict)
    writes: list[Write] = dataclasses.field(default_factory=list)
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    configmaps: dict[tuple[str, str], dict[str, str]] = dataclasses.field(default_factory=dict)

    def put(self, *objs: KubeObject) -> None:
        for obj in objs:
            self.objects[(obj.PLURAL, obj.namespace or "", obj.name)] = obj

    def get(self, kind: type[Obj], name: str, namespace: str | None = None) -> Obj | None:
        obj = self.objects.get((kind.PLURAL, namespace or "", name))
        return obj if isinstance(obj, kind) else None

    def list_of(
        self, kind: type[Obj], namespace: str | None = None, field_selector: str | None = None
    ) -> list[Obj]:
        out = [o for o in self.objects.values() if isinstance(o, kind)]
        if field_selector:
            path, _, want = field_selector.partition("=")
            out = [o for o in out if _field(o, path) == want]
        return out

    def add_finalizer(self, obj: Obj, name: str) -> Obj:
        if name in obj.metadata.finalizers:
            return obj
        out = obj.model_copy(deep=True)
        out.metadata.finalizers.append(name)
        self.put(out)
        return out

    def remove_finalizer(self, ref: ObjectRef, name: str) -> None:
        obj = self.objects.get((ref.plural, ref.namespace or "", ref.name))
        if obj is not None and name in obj.metadata.finalizers:
            obj.metadata.finalizers.remove(name)

    def apply_status(
        self,
        ref: ObjectRef,
        status: StatusModel,
        *,
        resource_version: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        applied = status.to_apply()
        self.writes.append(Write(ref, applied, force))
        key = (ref.plural, ref.namespace or "", ref.name)
        obj = self.objects.get(key)
        if obj is not None:
            merged = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
            current = merged.setdefault("status", {})
            for name, value in applied.items():
                if name == "conditions":
                    kept = [
                        c
                        for c in current.get("conditions", [])
                        if c["type"] not in {n["type"] for n in value}
                    ]
                    current["conditions"] = kept + value
                else:
                    current[name] = value
            self.objects[key] = type(obj).parse(merged)
        return {}

    def put_configmap(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        *,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        owner: ObjectRef | None = None,
    ) -> None:
        self.configmaps[(namespace, name)] = dict(data)

    def event(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append((ref.name, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


def _field(obj: KubeObject, path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        value = getattr(value, part, None)
    return None if value is None else str(value)
