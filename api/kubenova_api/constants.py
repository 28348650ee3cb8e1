"""Names shared by every kubenova component: group, version, plurals, prefixes."""

from typing import Final

GROUP: Final = "compute.kubenova.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

PREFIX: Final = GROUP
#: Held on a Server by its host's agent until the domain and its disks are gone.
FINALIZER_DOMAIN: Final = f"{PREFIX}/domain"
#: Held on a ServerMigration by the controller until its outcome is known.
FINALIZER_MIGRATION: Final = f"{PREFIX}/migration"
#: Label on the ServerMigrations a drain creates: the host being drained.
EVACUATION_LABEL: Final = f"{PREFIX}/evacuating"
#: The field that binds a Server to a host; agents watch on it server-side.
NODE_FIELD: Final = "status.nodeName"
#: Label on what an agent writes for its node (a console answer): that node's name.
NODE_LABEL: Final = f"{PREFIX}/node"

FLAVORS: Final = "flavors"
IMAGES: Final = "images"
SERVERS: Final = "servers"
HYPERVISORS: Final = "hypervisors"
SERVERGROUPS: Final = "servergroups"
SERVERMIGRATIONS: Final = "servermigrations"
COMPUTEQUOTAS: Final = "computequotas"
SOURCE_FIELD: Final = "status.sourceNode"
TARGET_FIELD: Final = "status.targetNode"
