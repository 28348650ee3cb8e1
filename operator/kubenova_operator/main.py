"""``kubenova-controller``: runs the kopf operator with kubenova's handlers — with
``--leader-elect`` only while this replica holds the Lease (see ``leader``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

import kopf
from kubernetes import client

from kubenova_api import health, kube, metrics
from kubenova_operator import handlers, leader, settings


async def _operate(beat: health.Heartbeat) -> None:
    """kopf, and a heartbeat that shows the event loop still turns (``/healthz``)."""

    async def heartbeat() -> None:
        while True:
            beat.beat()
            await asyncio.sleep(1)

    task = asyncio.create_task(heartbeat())
    try:
        await kopf.operator(clusterwide=True, standalone=True)
    finally:
        task.cancel()


def main(argv: list[str] | None = None) -> int:
    cfg = settings.from_args(argv)
    lead = leader.from_settings(cfg)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig
    handlers.configure_runtime(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kubenova_operator").setLevel(os.environ.get("KUBENOVA_LOG_LEVEL", "INFO"))
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    beat = health.Heartbeat()
    leading = threading.Event()
    # A standby is alive and ready (it can take over); a leader is alive while kopf's loop turns.
    metrics.serve(cfg.metrics_address)
    health.serve(
        cfg.health_address, alive=lambda: not leading.is_set() or beat.fresh(), ready=lambda: True
    )
    elector = None
    if lead.enabled:
        elector = leader.Elector(client.CoordinationV1Api(kube.api_client(cfg.kubeconfig)), lead)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if not elector.acquire(stop):
            return 0  # asked to stop while standing by
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # kopf installs its own
        elector.keep(leader.exit_now)
    leading.set()
    beat.beat()
    try:
        # kopf peering is off: with --leader-elect the Lease decides who acts.
        asyncio.run(_operate(beat))
    finally:
        if elector is not None:
            elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
