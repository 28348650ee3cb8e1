"""A probe on a guest network: a namespace of the caller's own, with one link into a bridge of
a host of the bed (a tenant network's bridge, say), and the probes run from inside it.

    probe = netprobe.Probe(host_netns, bridge, ipaddress.IPv4Interface("192.168.77.250/24"))
    probe.start()
    probe.check_route(guest_ip)            # on-link, by the probe's own link: raises otherwise
    with probe.first_reply(guest_ip, 80, "kubenova-www g1", 180) as reply:
        t0 = time.monotonic(); ...         # start the guest
    reply.at - t0                          # first TCP (HTTP) reply, same clock
    with probe.ping(guest_ip, 0.05) as stream:
        ...                                # move the guest
    stream.result.lost_between(t0, t1), stream.result.longest_gap(t0, t1)

The probe namespace has no route but its link's subnet, so probes reach only addresses on that
bridge (inside the bed's namespaces); :meth:`Probe.check_route` says so before any traffic.
Both probes run as ``python -m kubenova_devenv.netprobe`` inside the namespace, started before
what they measure (so the interpreter's start is not timed), and report ``time.monotonic()``
values (one clock for the whole machine) that the caller compares with its own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from kubenova_devenv import scoped


def _ip(*args: str, check: bool = True) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


@dataclasses.dataclass(frozen=True)
class Reply:
    """The first reply of :meth:`Probe.first_reply`: when (``time.monotonic()``) and after how
    many connection attempts."""

    at: float
    attempts: int


@dataclasses.dataclass(frozen=True)
class PingResult:
    """Echo requests sent (seq, when) and replies received (seq, when) by :meth:`Probe.ping`."""

    interval: float
    sent: tuple[tuple[int, float], ...]
    replies: tuple[tuple[int, float], ...]

    def _window(self, start: float, end: float) -> tuple[list[int], list[float]]:
        sent = [seq for seq, at in self.sent if start <= at <= end]
        got = {seq for seq, _ in self.replies}
        asked = set(sent)
        answered = sorted(at for seq, at in self.replies if seq in asked)
        return [s for s in sent if s not in got], answered

    def sent_between(self, start: float, end: float) -> int:
        return sum(1 for _, at in self.sent if start <= at <= end)

    def lost_between(self, start: float, end: float) -> int:
        """Requests sent in [start, end] that got no reply."""
        return len(self._window(start, end)[0])

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time (s) without a reply to a request sent in [start, end], counted
        from ``start`` and up to ``end`` too (so a stream that stopped answering shows)."""
        answered = self._window(start, end)[1]
        marks = [start, *answered, end]
        return max(b - a for a, b in itertools.pairwise(marks))


@dataclasses.dataclass
class _Running:
    proc: subprocess.Popen[str]
    result: Any = None


@dataclasses.dataclass
class Probe(scoped.Scoped):
    host_netns: str
    """The (root-visible) network namespace of the bed's host whose bridge the probe joins."""
    bridge: str
    address: ipaddress.IPv4Interface
    mtu: int = 1450
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(3))
    started: bool = False

    @property
    def netns(self) -> str:
        return f"knp{self.token}"

    @property
    def host_end(self) -> str:
        """The probe link's end in the host, a port of ``bridge`` (a name with none of the
        agent's prefixes: its cleanup never touches it)."""
        return f"knp{self.token}"

    def start(self) -> None:
        _ip("netns", "add", self.netns)
        self.started = True
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("link", "add", "name", "eth0", "netns", self.netns, "mtu", str(self.mtu),
            "type", "veth", "peer", "name", self.host_end, "netns", self.host_netns,
            "mtu", str(self.mtu))  # fmt: skip
        _ip("-n", self.host_netns, "link", "set", self.host_end, "master", self.bridge, "up")
        _ip("-n", self.netns, "addr", "add", str(self.address), "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        # Resolve a guest's address as soon as it answers: ARP every 100 ms, not every second.
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w",
             "net.ipv4.neigh.eth0.retrans_time_ms=100"],
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.started:
            _ip("-n", self.host_netns, "link", "del", self.host_end, check=False)
            _ip("netns", "del", self.netns, check=False)
            self.started = False

    def check_route(self, address: ipaddress.IPv4Address) -> None:
        """Raise unless the probe's route to ``address`` is its own link, on-link (no
        gateway): traffic to it stays on the bridge."""
        route = json.loads(_ip("-n", self.netns, "-j", "route", "get", str(address)))[0]
        if route.get("dev") != "eth0" or route.get("gateway"):
            raise RuntimeError(f"the probe's route to {address} is {route}, not its own link")
        if address not in self.address.network:
            raise RuntimeError(f"{address} is not on the probe's subnet {self.address.network}")

    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "kubenova_devenv.netprobe",
             *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = _readline(proc.stdout, 30)
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"the probe did not start: {line!r} {proc.stderr.read()}")  # type: ignore[union-attr]
        return proc

    @contextmanager
    def first_reply(
        self, address: ipaddress.IPv4Address, port: int, expect: str, timeout: float
    ) -> Iterator[_Running]:
        """Connect to ``address``:``port`` again and again (HTTP GET) until the answer holds
        ``expect``; ``result`` is the :class:`Reply` once the block has ended and the reply
        came (RuntimeError if none within ``timeout`` s of the block's start)."""
        self.check_route(address)
        run = _Running(self._spawn("first-reply", str(address), str(port), expect, str(timeout)))
        try:
            yield run
            out, err = run.proc.communicate(timeout=timeout + 30)
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        found: dict[str, Any] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        if run.proc.returncode != 0 or "at" not in found:
            raise RuntimeError(f"no reply from {address}:{port}: {found} {err.strip()[-500:]}")
        run.result = Reply(float(found["at"]), int(found["attempts"]))

    @contextmanager
    def ping(
        self, address: ipaddress.IPv4Address, interval: float, answering: float = 60
    ) -> Iterator[_Running]:
        """ICMP echo requests every ``interval`` s for as long as the block runs; the block is
        entered once ``address`` answers (RuntimeError if not within ``answering`` s);
        ``result`` is the :class:`PingResult` afterwards."""
        self.check_route(address)
        run = _Running(self._spawn("ping", str(address), str(interval), str(answering)))
        assert run.proc.stdout is not None and run.proc.stdin is not None
        try:
            line = _readline(run.proc.stdout, answering + 10)
            if line.strip() != "answering":
                raise RuntimeError(f"{address} does not answer pings: {line!r}")
            yield run
            out, err = run.proc.communicate(timeout=30)  # closes stdin: the probe stops
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        if run.proc.returncode != 0:
            raise RuntimeError(f"the ping of {address} failed: {err.strip()[-500:]}")
        found = json.loads(out.strip().splitlines()[-1])
        run.result = PingResult(
            interval,
            tuple((int(s), float(t)) for s, t in found["sent"]),
            tuple((int(s), float(t)) for s, t in found["replies"]),
        )


def _readline(stream: IO[str], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


# ----------------------------------------------------------------------------- inside the probe


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def first_reply(address: str, port: int, expect: str, timeout: float) -> int:
    _say("ready")
    deadline = time.monotonic() + timeout
    attempts = 0
    last = ""
    while time.monotonic() < deadline:
        attempts += 1
        try:
            with socket.create_connection((address, port), timeout=0.5) as sock:
                sock.settimeout(3)
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                body = b""
                while chunk := sock.recv(4096):
                    body += chunk
            at = time.monotonic()
            if expect in body.decode(errors="replace"):
                _say(json.dumps({"at": at, "attempts": attempts}))
                return 0
            last = f"answered {body[-200:]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    _say(json.dumps({"error": f"no answer within {timeout} s", "attempts": attempts,
                     "last": last}))  # fmt: skip
    return 1


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"kubenova-probe".ljust(32, b".")
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq & 0xFFFF) + payload


def ping(address: str, interval: float, answering: float) -> int:
    """Echo requests every ``interval`` s until stdin closes; "answering" once the first reply
    came; then the JSON of what was sent and received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(0.2)
    ident = os.getpid() & 0xFFFF
    sent: list[tuple[int, float]] = []
    replies: list[tuple[int, float]] = []
    stop = threading.Event()
    first = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data, (src, _) = sock.recvfrom(2048)
            except TimeoutError:
                continue
            at = time.monotonic()
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, who, seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if kind == 0 and who == ident and src == address and sent:
                # the full sequence number: the latest sent one with these low 16 bits
                base = sent[-1][0]
                full = base - ((base - seq) & 0xFFFF)
                replies.append((full, at))
                first.set()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    _say("ready")
    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    threading.Thread(target=until_stdin_closes, daemon=True).start()
    started = time.monotonic()
    seq = 0
    said = False
    while not stop.is_set():
        due = started + seq * interval
        pause = due - time.monotonic()
        if pause > 0:
            stop.wait(pause)
            if stop.is_set():
                break
        sent.append((seq, time.monotonic()))
        try:
            sock.sendto(_echo(ident, seq), (address, 0))
        except OSError:
            pass  # no route or neighbour yet: counted as lost
        seq += 1
        if not said and first.is_set():
            _say("answering")
            said = True
        if not said and time.monotonic() - started > answering:
            _say("silent")
            said = True
    time.sleep(1.0)  # late replies to the last requests
    stop.set()
    receiver.join(timeout=2)
    _say(json.dumps({"sent": sent, "replies": replies}))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["first-reply"] and len(argv) == 5:
        return first_reply(argv[1], int(argv[2]), argv[3], float(argv[4]))
    if argv[:1] == ["ping"] and len(argv) == 4:
        return ping(argv[1], float(argv[2]), float(argv[3]))
    print("usage: netprobe first-reply ADDRESS PORT EXPECT TIMEOUT | "
          "ping ADDRESS INTERVAL ANSWERING", file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
