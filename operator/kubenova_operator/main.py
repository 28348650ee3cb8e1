"""``kubenova-controller``: runs the kopf operator with kubenova's handlers."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import kopf

from kubenova_operator import handlers, settings


def main(argv: list[str] | None = None) -> int:
    cfg = settings.from_args(argv)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig
    handlers.configure_runtime(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kubenova_operator").setLevel(os.environ.get("KUBENOVA_LOG_LEVEL", "INFO"))
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # One active controller: kopf peering needs its own CRDs; standalone until HA lands.
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
