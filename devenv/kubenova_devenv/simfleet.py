"""Many simulated hypervisor hosts in one process: one real kubenova Agent per host, each on
its own libvirt test-driver connection (``test:///<file>.xml``, a private state per host), all
sharing the process. Cheap enough for a hundred hosts on a laptop-sized machine.

    python -m kubenova_devenv.simfleet --hosts 100 --kubeconfig KC --workdir DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import signal
import sys
import threading
from types import FrameType

from kubenova_agent import informer, settings
from kubenova_agent import main as agent_main
from kubenova_api import kube
from kubenova_devenv import simhost


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="simfleet", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--prefix", default="sim")
    p.add_argument("--cpus", type=int, default=8)
    p.add_argument("--memory-mib", type=int, default=16384)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--heartbeat-seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--networks",
        action="store_true",
        help="publish a (loopback) tunnel address and physical network lan per host; "
        "nothing is plumbed",
    )
    p.add_argument(
        "--shared-watches",
        action="store_true",
        help="one watch per kind for the whole process, each agent reading its own hosts' "
        "objects from it, instead of one field-selected watch per agent (the API server "
        "indexes no field of a custom resource, so a thousand watchers cost it a thousand "
        "deliveries of every event)",
    )
    p.add_argument("--image-permitted-networks", default="")  # the bed's opt-in to loopback
    p.add_argument("--image-allowed-ports", default="80,443")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    work = pathlib.Path(args.workdir)
    agents = []
    watches: informer.Watches | None = None
    if args.shared_watches:
        watches = informer.SharedWatches(
            kube.Kube(kube.api_client(args.kubeconfig), "kubenova-agent/simfleet", "kubenova-agent")
        )
    for i, name in enumerate(simhost.host_names(args.prefix, args.hosts)):
        uri = simhost.write_host_file(work / name / "host.xml", args.cpus, args.memory_mib)
        cfg = settings.AgentSettings(
            host_name=name,
            libvirt_uri=uri,
            virt_type="test",
            state_dir=str(work / name / "state"),
            heartbeat_seconds=args.heartbeat_seconds,
            resync_seconds=120.0,
            workers=args.workers,
            reserved_memory_mib=0,
            kubeconfig=args.kubeconfig,
            network_plumbing=False,
            image_permitted_networks=args.image_permitted_networks,
            image_allowed_ports=args.image_allowed_ports,
        )
        if args.networks:
            cfg = dataclasses.replace(
                cfg,
                tunnel_address=f"127.77.{i // 250}.{i % 250 + 1}",
                physical_interface_mappings="lan:lo",
            )

        agent = agent_main.Agent(cfg, watches=watches)
        agent.start()
        agents.append(agent)
    print(f"simfleet: {len(agents)} agents running", flush=True)
    done = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    for agent in agents:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
