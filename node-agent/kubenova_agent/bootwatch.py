"""Did the guest boot? A disk without a boot loader leaves the domain running in its firmware
forever, which libvirt reports as a healthy running domain. The firmware says so on the serial
console (SeaBIOS with ``useserial``, OVMF always): the agent reads the console's tail for a
while after each start it made, and a Server whose firmware found nothing to boot gets a Ready
condition and an Event that say so instead of a silent ACTIVE.

Plain functions over the console's text; no libvirt, no Kubernetes."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time

TAIL_BYTES = 4096
CHECK_EVERY = 3.0
"""Seconds between looks at the console while a boot is watched."""

#: What firmwares print when they find nothing to boot, and how to say it.
FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"No bootable device"), "the BIOS found no bootable device"),
    (re.compile(r"Boot failed: not a bootable disk"), "the BIOS found no boot loader on the disk"),
    (
        re.compile(r"No bootable option or device was found"),
        "the UEFI firmware found no bootable option or device",
    ),
    (
        re.compile(r"error: you need to load the kernel first"),
        "the boot loader could not load the kernel (GRUB: out of memory or file not found)",
    ),
    (
        re.compile(r"Access Denied"),
        "the UEFI firmware refused the boot loader (secure boot: not signed by an enrolled key)",
    ),
)


def failure_in(text: str) -> str | None:
    """Why the guest did not boot, if the console's last lines say its firmware gave up."""
    tail = text[-TAIL_BYTES:]
    for pattern, why in FAILURES:
        if pattern.search(tail):
            return why
    return None


def console_since(path: str, offset: int) -> str:
    """The console's last bytes written after ``offset`` (at most :data:`TAIL_BYTES`)."""
    try:
        with pathlib.Path(path).open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(offset, size - TAIL_BYTES, 0))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


@dataclasses.dataclass
class BootWatch:
    """Boots this agent started and watches, by Server UID: until when to look, and the
    failures found (kept until the guest is started again)."""

    timeout: float
    deadlines: dict[str, float] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    offsets: dict[str, int] = dataclasses.field(default_factory=dict)

    def started(self, uid: str, console: str) -> None:
        """The guest was (re)started now: watch this boot, forget the last one's failure."""
        self.deadlines[uid] = time.monotonic() + self.timeout
        self.failed.pop(uid, None)
        try:
            self.offsets[uid] = pathlib.Path(console).stat().st_size
        except FileNotFoundError:
            self.offsets[uid] = 0

    def check(self, uid: str, console: str) -> float | None:
        """Look at the console of a watched boot: seconds until the next look, or None when
        the watch is over (the firmware gave up, see :attr:`failed`, or the timeout passed
        without it giving up)."""
        deadline = self.deadlines.get(uid)
        if deadline is None:
            return None
        why = failure_in(console_since(console, self.offsets.get(uid, 0)))
        if why is not None:
            self.failed[uid] = f"the guest did not boot: {why}"
            self.deadlines.pop(uid, None)
            return None
        if time.monotonic() >= deadline:
            self.deadlines.pop(uid, None)
            return None
        return CHECK_EVERY

    def forget(self, uid: str) -> None:
        for table in (self.deadlines, self.failed, self.offsets):
            table.pop(uid, None)
