"""``kubenova-openstack-api``: serve the OpenStack APIs until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from kubenova_openstack import app, settings
from kubenova_openstack.kubeapi import Endpoint, Kube


def main(argv: list[str] | None = None) -> int:
    cfg = settings.parse(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kube = Kube(Endpoint.from_kubeconfig(cfg.kubeconfig))
    application = app.build(cfg, kube)
    print(f"kubenova-openstack-api: serving {cfg.base_url}", flush=True)
    web.run_app(application, host=cfg.host, port=cfg.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
