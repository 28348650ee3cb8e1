"""``kubenova``: the command for people.

* ``kubenova up`` — the quickstart: a local control plane, the controller, one agent on a local
  libvirtd, the example Flavor, Image and Server applied, and the guest's console shown;
* ``kubenova crds`` — generate (or ``--check``) the CRDs in ``deploy/crds/`` from the models.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def cmd_crds(args: argparse.Namespace) -> int:
    from kubenova_api import crds  # noqa: PLC0415

    out = pathlib.Path(args.out)
    if not args.check:
        for path in crds.write_all(out):
            print(f"wrote {path}")
        return 0
    stale = []
    for kind in crds.KINDS:
        path = out / crds.file_name(kind)
        if not path.exists() or path.read_text() != crds.render(kind):
            stale.append(str(path))
    if stale:
        print("out of date (run `kubenova crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print("CRDs are up to date")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from kubenova_cli import up  # noqa: PLC0415

    return up.run(args)


def cmd_console(args: argparse.Namespace) -> int:
    """Print the tail of a Server's serial console, wherever it runs (Nova's
    get_console_output): ask its agent through an annotation, read the answer from the
    ConfigMap ``<server>-console`` it writes."""
    import uuid  # noqa: PLC0415

    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from kubenova_api import constants, kube  # noqa: PLC0415

    api = kube.api_client(args.kubeconfig)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    key = f"{constants.PREFIX}/console-request"
    nonce = uuid.uuid4().hex
    try:
        custom.patch_namespaced_custom_object(
            constants.GROUP,
            constants.VERSION,
            args.namespace,
            constants.SERVERS,
            args.server,
            {"metadata": {"annotations": {key: nonce}}},
        )
    except ApiException as exc:
        print(f"kubenova: server {args.namespace}/{args.server}: {exc.reason}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            cm = core.read_namespaced_config_map(f"{args.server}-console", args.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            if cm.metadata and (cm.metadata.annotations or {}).get(key) == nonce:
                lines = (cm.data or {}).get("console", "").splitlines()
                print("\n".join(lines[-args.lines :]))
                return 0
        time.sleep(0.2)
    print(
        f"kubenova: no answer from the agent of {args.server} within {args.timeout}s "
        "(is the server bound to a host whose agent runs?)",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubenova", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crds", help="generate the CRDs from the API models")
    c.add_argument("--out", default=str(REPO / "deploy" / "crds"))
    c.add_argument("--check", action="store_true", help="fail if the committed CRDs differ")
    c.set_defaults(func=cmd_crds)
    u = sub.add_parser("up", help="run kubenova locally and boot the example server")
    u.add_argument("--virt-type", default="qemu", choices=["qemu", "kvm", "auto"])
    u.add_argument("--workdir", help="where state and logs go (a new temporary folder if unset)")
    u.add_argument("--once", action="store_true", help="stop after the guest has booted")
    u.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    u.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the server to be Ready"
    )
    u.set_defaults(func=cmd_up)
    o = sub.add_parser("console", help="print the tail of a server's serial console")
    o.add_argument("server")
    o.add_argument("-n", "--namespace", default="default")
    o.add_argument("--lines", type=int, default=50)
    o.add_argument("--timeout", type=float, default=30.0)
    o.add_argument("--kubeconfig", default=None)
    o.set_defaults(func=cmd_console)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
