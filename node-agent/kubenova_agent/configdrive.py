"""The config drive (Nova's ``configdrive``): an ISO 9660 image labelled ``config-2`` in the
OpenStack layout cloud-init reads — ``openstack/latest/meta_data.json`` (uuid, name, hostname,
public keys, the list of injected files), ``user_data``, ``network_data.json`` and the
injected files under ``openstack/content/``."""

from __future__ import annotations

import io
import json
from typing import Any

import pycdlib

from kubenova_api.resources import Server, ServerSpec

LABEL = "config-2"


def metadata_of(server: Server) -> dict[str, Any]:
    """``meta_data.json`` of a Server (plain JSON: it is written as a file)."""
    spec = server.spec
    files = [
        {"path": f.path, "content_path": f"/content/{i:04d}"} for i, f in enumerate(spec.files)
    ]
    return {
        "uuid": server.uid,
        "name": server.name,
        "hostname": server.name,
        "project_id": server.namespace,
        "availability_zone": spec.availabilityZone or "nova",
        "launch_index": 0,
        "public_keys": {f"key-{i}": key for i, key in enumerate(spec.sshKeys)},
        "files": files,
        "meta": {},
    }


def _iso_name(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_", name.count(".") - 1)


def write(
    path: str,
    metadata: dict[str, Any],
    spec: ServerSpec,
    network_data: dict[str, Any] | None = None,
) -> None:
    """Write the config drive of a Server with ``spec`` to ``path``; ``network_data`` is
    ``network_data.json`` (:func:`kubenova_agent.network.guestdata.network_data`), none by
    default."""
    entries: dict[str, bytes] = {
        "openstack/latest/meta_data.json": json.dumps(metadata).encode(),
        "openstack/latest/network_data.json": json.dumps(
            network_data or {"links": [], "networks": [], "services": []}
        ).encode(),
    }
    if spec.userData:
        entries["openstack/latest/user_data"] = spec.userData.encode()
    for i, f in enumerate(spec.files):
        entries[f"openstack/content/{i:04d}"] = f.content.encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    made: set[str] = set()
    for name, data in sorted(entries.items()):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                iso.add_directory(
                    "/" + "/".join(_iso_name(p) for p in parts[:depth]),
                    rr_name=parts[depth - 1],
                    joliet_path="/" + folder,
                )
                made.add(folder)
        iso_path = "/" + "/".join(_iso_name(p) for p in parts) + ";1"
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=parts[-1], joliet_path="/" + name)
    # Built in memory and written at once: pycdlib seeks about fifty times while it lays the
    # image out, and on a file each seek flushes a write of its own.
    image = io.BytesIO()
    iso.write_fp(image)
    iso.close()
    with open(path, "wb") as out:
        out.write(image.getbuffer())
