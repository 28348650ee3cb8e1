"""The config drive is an ISO 9660 image labelled config-2 in OpenStack's layout."""

from __future__ import annotations

import io
import json
import pathlib

import pycdlib

from kubenova_agent import configdrive
from kubenova_api.resources import Server

BODY = {
    "metadata": {"uid": "6f1c", "name": "web-1", "namespace": "demo"},
    "spec": {
        "flavorRef": "m1.tiny",
        "imageRef": "img",
        "userData": "#cloud-config\n",
        "sshKeys": ["ssh-ed25519 AAAA demo"],
        "files": [
            {"path": "/etc/motd", "content": "hello"},
            {"path": "/root/note.txt", "content": "second"},
        ],
    },
}


def _read(iso: pycdlib.PyCdlib, path: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=path)
    return out.getvalue().decode()


def test_layout_label_and_contents(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cd.iso"
    server = Server.parse(BODY)
    configdrive.write(str(path), configdrive.metadata_of(server), server.spec)
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "config-2"
        meta = json.loads(_read(iso, "/openstack/latest/meta_data.json"))
        assert meta["uuid"] == "6f1c" and meta["hostname"] == "web-1"
        assert meta["public_keys"] == {"key-0": "ssh-ed25519 AAAA demo"}
        assert meta["files"] == [
            {"path": "/etc/motd", "content_path": "/content/0000"},
            {"path": "/root/note.txt", "content_path": "/content/0001"},
        ]
        assert _read(iso, "/openstack/content/0001") == "second"
        assert _read(iso, "/openstack/latest/user_data") == "#cloud-config\n"
        assert json.loads(_read(iso, "/openstack/latest/network_data.json"))["links"] == []
    finally:
        iso.close()
