"""``kubenova up``: the quickstart, supervised.

It starts a local control plane, one libvirtd host, the controller and an agent, applies the
examples and waits for the Server — saying what happens meanwhile (host registered, bound,
image fetched, phase and conditions) — then shows the guest's serial console. The host has a
network namespace of its own with a tunnel address (:mod:`kubenova_devenv.netbed`), so the
example's default tenant Network gives the guest a NIC and a DHCP address there, and nothing
a guest sends can leave the machine; ``--no-network`` leaves the host, and the guest, without.

Everything it starts is watched: if etcd, kube-apiserver, libvirtd, the controller or the agent
exits, it names it, prints the end of its log, stops everything else and exits non-zero within
a second or two. SIGINT, SIGTERM and SIGHUP stop every process it started, guests included;
the handlers are installed even where SIGINT arrives ignored (a shell's background job).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
from types import FrameType
from typing import Any, TextIO

import yaml

from kubenova_devenv import openstackapi, stack

REPO = pathlib.Path(__file__).resolve().parents[2]
SERVER, NAMESPACE = "web-1", "default"
POLL_SECONDS = 0.5


class Stop(BaseException):
    """A signal asked ``kubenova up`` to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ComponentExited(Exception):
    def __init__(self, exited: stack.Exited) -> None:
        super().__init__(f"{exited.name} exited (status {exited.returncode})")
        self.exited = exited


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


def _noted(signum: int, _frame: FrameType | None) -> None:
    print(f"kubenova: {signal.Signals(signum).name}: already stopping", file=sys.stderr)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="kubenova-up-"))
    s = stack.Stack(workdir, host_count=1, virt_type=args.virt_type, networking=args.network)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)  # overrides SIG_IGN too: background jobs get SIGINT
    status = 1
    say = _Say(out)
    say(f"starting etcd, kube-apiserver, libvirtd, controller and agent in {workdir}")
    try:
        status = _run(s, args, say)
    except Stop as stop:
        say(f"{stop}: stopping")
        status = 128 + stop.signum if stop.signum != signal.SIGINT else 0
    except ComponentExited as exc:
        ex = exc.exited
        say(f"{ex.name} exited with status {ex.returncode}; the end of {ex.log}:", err=True)
        print(_indent(ex.tail()), file=sys.stderr)
        status = 1
    except TimeoutError as exc:
        say(str(exc), err=True)
        status = 1
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _noted)  # a second Ctrl-C must not cut the clean-up short
        say("stopping everything it started (guests, libvirtd, controller, agent, API server)")
        try:
            s.stop()
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                say(f"logs and state kept in {workdir}")
    return status


def _run(s: stack.Stack, args: argparse.Namespace, say: _Say) -> int:
    s.start()
    kubeconfig = s.cp.kubeconfig()
    say(f"control plane at {s.cp.url}; export KUBECONFIG={kubeconfig}")
    s.kubectl("apply", "-f", str(REPO / "examples" / "flavor.yaml"))
    s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(s.image_manifest()))
    say("applied examples/flavor.yaml and the example Image")
    if args.network:
        s.kubectl("apply", "-f", str(REPO / "examples" / "network.yaml"))
        say("applied examples/network.yaml (the default Network of namespace default)")
    view = _View(s, _Progress(say, time.monotonic()))
    view.wait(view.hosts_ready, args.timeout, "the host's agent to be ready")
    t0 = time.monotonic()
    s.kubectl("apply", "-f", str(REPO / "examples" / "server.yaml"))
    say("applied examples/server.yaml")
    view.progress.t0 = t0
    server = view.wait(view.server_ready, args.timeout, f"server {SERVER} to be Ready")
    say(f"server {SERVER} is Ready after {time.monotonic() - t0:.1f}s\n")
    print(s.kubectl("get", "flavors,images,networks,servers,hypervisors", "-o", "wide").stdout)
    uid = server["metadata"]["uid"]
    host = server["status"]["nodeName"]
    view.wait(lambda: _booted(s.console(host, uid), args.network), 120, "the guest's console")
    console = s.console(host, uid)
    print(f"--- serial console of {SERVER} (domain {server['status']['domainName']} on {host})")
    print(console.rstrip())
    print("---", flush=True)
    if args.once:
        return 0
    _openstack(s, say)
    say(f"running; try `KUBECONFIG={kubeconfig} kubectl get srv -o wide`. Ctrl-C stops everything.")
    shown = len(console)
    while True:
        _check(s)
        text = s.console(host, uid)
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        time.sleep(POLL_SECONDS)


#: The OpenStack user ``kubenova up`` makes: an administrator, impersonated as ``alice``.
OPENSTACK_USER = openstackapi.OpenStackUser("admin", "kubenova", "alice")


def _openstack(s: stack.Stack, say: _Say) -> None:
    """Start the OpenStack API facade and write an ``openrc`` and a ``clouds.yaml`` for it."""
    openstackapi.install(s, [OPENSTACK_USER])
    openstackapi.grant(s, "kubenova-openstack-admin", user=OPENSTACK_USER.kubernetes_user)
    proc, url = openstackapi.start(s)
    s.extra.append(proc)
    rc, clouds = openstackapi.write_client_files(s.workdir, url, OPENSTACK_USER, NAMESPACE)
    say(f"OpenStack APIs at {url} (compute /v2.1, image /image, identity /identity/v3)")
    say(f"  . {rc}            # then: openstack server list")
    say(f"  OS_CLIENT_CONFIG_FILE={clouds} openstack --os-cloud kubenova server list")


#: The guest's uptime line, once a second from when its start script is done.
UPTIME = re.compile(r"^kubenova-uptime (\d+)\.", re.MULTILINE)


def _booted(console: str, network: bool) -> bool:
    """The guest has been up for 3 s and, on a network, has said which address it took."""
    up = max((int(m) for m in UPTIME.findall(console)), default=0)
    return up >= 3 and (not network or "kubenova-net " in console)


def _check(s: stack.Stack) -> None:
    exited = s.exited()
    if exited is not None:
        raise ComponentExited(exited)


class _View:
    """Looks at the cluster the way a person would while waiting, saying what changes and
    failing at once when a component exits."""

    def __init__(self, s: stack.Stack, progress: _Progress) -> None:
        from kubernetes import client  # noqa: PLC0415 - only `up` needs the client here

        from kubenova_api import kube  # noqa: PLC0415

        self.stack = s
        self.progress = progress
        api = kube.api_client(str(s.cp.kubeconfig()))
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)

    def wait(self, done: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            _check(self.stack)
            result = done()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {what}; the last state: "
                    f"{self.progress.last or '(nothing yet)'}; logs are in {self.stack.workdir} "
                    "(run with --keep to keep them)"
                )
            time.sleep(POLL_SECONDS)

    def hosts_ready(self) -> bool:
        from kubenova_api import constants, kube  # noqa: PLC0415

        listing = self.custom.list_cluster_custom_object(
            constants.GROUP, constants.VERSION, constants.HYPERVISORS
        )
        hvs = kube.as_dict(listing)["items"]
        for hv in hvs:
            self.progress.hypervisor(hv)
        return bool(hvs) and all(
            _condition(hv.get("status") or {}, "Ready").get("status") == "True" for hv in hvs
        )

    def server_ready(self) -> dict[str, Any] | None:
        from kubenova_api import constants, kube  # noqa: PLC0415

        self.hosts_ready()
        server = kube.as_dict(
            self.custom.get_namespaced_custom_object(
                constants.GROUP, constants.VERSION, NAMESPACE, constants.SERVERS, SERVER
            )
        )
        events = self.core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.uid={server['metadata']['uid']}"
        ).items
        for event in sorted(events, key=lambda e: str(e.metadata.creation_timestamp)):
            self.progress.event(event)
        self.progress.server(server)
        ready = _condition(server.get("status") or {}, "Ready").get("status") == "True"
        return server if ready else None


@dataclasses.dataclass
class _Say:
    out: TextIO

    def __call__(self, text: str, err: bool = False) -> None:
        print(f"kubenova: {text}", file=sys.stderr if err else self.out, flush=True)


@dataclasses.dataclass
class _Progress:
    """Prints what changed since the last look: hosts registered, the Server's phase and
    conditions, and its Events."""

    say: _Say
    t0: float
    seen_events: set[str] = dataclasses.field(default_factory=set)
    hosts: dict[str, str] = dataclasses.field(default_factory=dict)
    last_server: str = ""
    last: str = ""

    def _line(self, text: str) -> None:
        self.last = text
        self.say(f"[{time.monotonic() - self.t0:5.1f}s] {text}")

    def hypervisor(self, hv: dict[str, Any]) -> None:
        name = hv["metadata"]["name"]
        status = hv.get("status") or {}
        total = status.get("total") or {}
        up = _condition(status, "Ready")
        if not total:
            state = f"host {name}: registered; waiting for its agent's first report"
        else:
            state = (
                f"host {name}: {'ready' if up.get('status') == 'True' else 'not ready'} "
                f"({total.get('vcpus', '?')} vCPUs, {total.get('memoryMiB', '?')} MiB, "
                f"{status.get('hypervisorType') or '?'} {status.get('hypervisorVersion') or ''}, "
                f"virt type {status.get('virtType') or '?'})"
            )
        if self.hosts.get(name) != state:
            self.hosts[name] = state
            self._line(state)

    def event(self, event: Any) -> None:
        uid = event.metadata.uid
        if uid in self.seen_events:
            return
        self.seen_events.add(uid)
        kind = "warning " if event.type == "Warning" else ""
        self._line(f"{SERVER}: {kind}event {event.reason}: {event.message}")

    def server(self, server: dict[str, Any]) -> None:
        text = self.describe(server)
        if text != self.last_server:
            self.last_server = text
            self._line(f"{SERVER}: {text}")

    @staticmethod
    def describe(server: dict[str, Any]) -> str:
        status = server.get("status") or {}
        parts = [f"phase {status.get('phase') or '(none yet)'}"]
        if status.get("nodeName"):
            parts.append(f"host {status['nodeName']}")
        for cond in status.get("conditions") or []:
            message = f" ({cond['message']})" if cond.get("message") else ""
            parts.append(f"{cond['type']}={cond['status']} {cond.get('reason', '')}{message}")
        return ", ".join(parts)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
