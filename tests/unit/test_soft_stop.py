"""A soft stop waits on the work queue's timer, not in a worker, and never longer than the
admin allows."""

from __future__ import annotations

import pathlib
import threading
import time

import pytest

from kubenova_agent import softstop
from kubenova_agent.libvirt import domain_xml
from kubenova_agent.libvirt.guest import Guests, State
from kubenova_agent.libvirt.host import Host
from kubenova_agent.workqueue import WorkQueue
from kubenova_devenv import simhost

pytestmark = pytest.mark.timeout(60)
UID = "0d7c1f7e-3f7a-4a55-9d0b-3a8b8e1f2c44"


class StubbornGuest:
    """A guest that ignores the power button (a fake of kubenova's own PowerButton)."""

    def __init__(self) -> None:
        self.presses = 0
        self.off = False

    def request_shutdown(self, uuid: str) -> bool:
        self.presses += 1
        return self.off


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_press_wait_press_again_then_force() -> None:
    guest, clock = StubbornGuest(), Clock()
    stops = softstop.SoftStops(guest, max_timeout=600, clock=clock)
    first = stops.step(UID, running=True, asked_timeout=30)
    assert first == softstop.Waiting(30, 10, True, 30, False) and guest.presses == 1
    clock.now += 4
    assert stops.step(UID, True, 30) == softstop.Waiting(26, 6, False, 30, False)
    assert guest.presses == 1
    clock.now += 6
    again = stops.step(UID, True, 30)
    assert isinstance(again, softstop.Waiting) and guest.presses == 2  # Nova's retry_interval
    clock.now += 21
    assert stops.step(UID, True, 30) == softstop.Expired(31, 30)
    assert not stops.in_progress(UID)


def test_a_guest_that_goes_off_is_reported_with_how_long_it_took() -> None:
    guest, clock = StubbornGuest(), Clock()
    stops = softstop.SoftStops(guest, clock=clock)
    stops.step(UID, True, 60)
    clock.now += 7.5
    assert stops.step(UID, running=False, asked_timeout=60) == softstop.Off(7.5)
    guest.off = True
    assert stops.step(UID, True, 60) == softstop.Off(0.0)  # off at the first press
    assert stops.step(UID, False, 60) == softstop.Off(0.0)  # nothing was pending


def test_the_admin_maximum_caps_what_a_tenant_asks() -> None:
    guest, clock = StubbornGuest(), Clock()
    stops = softstop.SoftStops(guest, max_timeout=120, clock=clock)
    w = stops.step(UID, True, 3600)
    assert isinstance(w, softstop.Waiting) and (w.timeout, w.capped) == (120, True)
    clock.now += 121
    assert stops.step(UID, True, 3600) == softstop.Expired(121, 120)
    assert stops.step(UID, True, 0) == softstop.Expired(0.0, 0.0)  # 0: force at once
    stops.step(UID, True, 60)
    assert stops.cancel(UID) and not stops.cancel(UID)


def test_a_long_soft_stop_does_not_hold_the_only_worker() -> None:
    """One worker, one guest that ignores the button for its whole (capped) timeout, and
    another Server that needs the worker meanwhile: it gets it within a second."""
    guest = StubbornGuest()
    stops = softstop.SoftStops(guest, max_timeout=3.0, repress_seconds=0.5)
    q: WorkQueue[str] = WorkQueue()
    seen: dict[str, float] = {}
    outcome: list[softstop.Outcome] = []

    def reconcile(key: str) -> float | None:
        if key == "other":
            seen["other"] = time.monotonic()
            return None
        step = stops.step(UID, running=True, asked_timeout=3600)
        if isinstance(step, softstop.Waiting):
            return step.recheck
        outcome.append(step)  # Expired: the agent forces the guest off here
        seen["forced"] = time.monotonic()
        return None

    worker = threading.Thread(
        target=lambda: [0 for _ in iter(lambda: q.process_next(reconcile), False)]
    )
    worker.start()
    start = time.monotonic()
    q.add("slow")
    time.sleep(0.2)
    q.add("other")
    deadline = time.monotonic() + 20
    while "forced" not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    q.close()
    worker.join(5)
    assert seen["other"] - start < 1.5, seen
    assert outcome and isinstance(outcome[0], softstop.Expired)
    assert 2.9 <= seen["forced"] - start < 10, seen
    assert guest.presses >= 4  # pressed again every 0.5 s while waiting


def test_libvirt_request_shutdown_returns_at_once(tmp_path: pathlib.Path) -> None:
    host = Host(simhost.write_host_file(tmp_path / "host.xml"))
    try:
        guests = Guests(host)
        guests.define(
            domain_xml.build_domain_xml(
                domain_xml.DomainConfig(
                    owner=domain_xml.Owner("ns", "vm", UID),
                    virt_type=domain_xml.VirtType.test,
                    vcpus=1,
                    memory_mib=64,
                    disks=(),
                    console_log=str(tmp_path / "console.log"),
                )
            )
        )
        guests.start(UID)
        started = time.monotonic()
        off = guests.request_shutdown(UID)
        assert time.monotonic() - started < 5
        info = guests.get(UID)
        assert info is not None
        assert off and info.state is State.shutoff  # the test driver obeys at once
        assert guests.request_shutdown(UID)  # already off: nothing to press
    finally:
        host.close()
