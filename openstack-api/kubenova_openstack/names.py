"""Where OpenStack's own attributes live on kubenova's objects.

Nova names are free text and may repeat; a Kubernetes name is neither. A Server made through
the facade gets a generated ``metadata.name`` (a slug of its Nova name plus a random suffix)
and keeps its Nova name, description, metadata, key pair name and creator in annotations; its
id is ``metadata.uid`` (the libvirt domain's UUID as well), also put in a label so that it is
found without listing the namespace. A Flavor's Nova id (``"1"``, a UUID, …) is a label and an
annotation on it, so it survives any restart of the facade; a Flavor made with kubectl has
its name as its id. An Image's id is its UID.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

from kubenova_api import constants
from kubenova_api.common import KubeObject

P: Final = constants.PREFIX
DISPLAY_NAME: Final = f"{P}/display-name"
DESCRIPTION: Final = f"{P}/description"
METADATA: Final = f"{P}/metadata"
KEY_NAME: Final = f"{P}/key-name"
ACCESS_IPV4: Final = f"{P}/access-ipv4"
ACCESS_IPV6: Final = f"{P}/access-ipv6"
USER_ID: Final = f"{P}/user-id"
FLAVOR_ID: Final = f"{P}/flavor-id"
SERVER_ID: Final = f"{P}/server-id"
KEYPAIR: Final = f"{P}/keypair"
KEYPAIR_TYPE: Final = f"{P}/keypair"
RESERVATION: Final = f"{P}/reservation-id"
LAUNCH_INDEX: Final = f"{P}/launch-index"

_SLUG = re.compile(r"[^a-z0-9-]+")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def slug(text: str, fallback: str = "server", limit: int = 40) -> str:
    """A DNS-label-safe form of ``text`` (may be empty → ``fallback``)."""
    out = _SLUG.sub("-", text.lower()).strip("-")[:limit].strip("-")
    return out or fallback


def generated(text: str, fallback: str = "server") -> str:
    """A fresh Kubernetes name for a Nova name: its slug and a random suffix."""
    return f"{slug(text, fallback)}-{secrets.token_hex(3)}"


def annotations_of(obj: dict[str, Any] | KubeObject) -> dict[str, str]:
    if isinstance(obj, KubeObject):
        return obj.metadata.annotations
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def labels_of(obj: dict[str, Any] | KubeObject) -> dict[str, str]:
    if isinstance(obj, KubeObject):
        return obj.metadata.labels
    return dict((obj.get("metadata") or {}).get("labels") or {})


def display_name(obj: dict[str, Any] | KubeObject) -> str:
    name = obj.name if isinstance(obj, KubeObject) else str(obj["metadata"]["name"])
    return annotations_of(obj).get(DISPLAY_NAME) or name


def flavor_id(flavor: dict[str, Any]) -> str:
    return annotations_of(flavor).get(FLAVOR_ID) or str(flavor["metadata"]["name"])
