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


def console_configmap(server: str, node: str) -> str:
    """The ConfigMap in which the agent of ``node`` answers console requests of Server
    ``server``: one per host, so that after a move the new host never writes the old one's."""
    return f"{server}-console-{node}"


FLAVORS: Final = "flavors"
IMAGES: Final = "images"
SERVERS: Final = "servers"
HYPERVISORS: Final = "hypervisors"
SERVERGROUPS: Final = "servergroups"
SERVERMIGRATIONS: Final = "servermigrations"
#: A ServerMigration's reason when it named a flavor its Server does not declare (refused
#: before anything moved: no resize attempt).
FLAVOR_NOT_DECLARED: Final = "FlavorNotDeclared"
NETWORKS: Final = "networks"
PROVIDERNETWORKS: Final = "providernetworks"
COMPUTEQUOTAS: Final = "computequotas"
SOURCE_FIELD: Final = "status.sourceNode"
TARGET_FIELD: Final = "status.targetNode"

#: Each agent renews a Lease in the heartbeat namespace (as each kubelet renews one in
#: ``kube-node-lease``): ``<HEARTBEAT_LEASE_PREFIX><host>``, labelled with the host's name. A
#: renewal is a small write that only the controller watches, so the Hypervisor's status is
#: written only when a figure in it changes.
HEARTBEAT_LEASE_PREFIX: Final = "hypervisor-"
HEARTBEAT_LEASE_LABEL: Final = f"{PREFIX}/hypervisor"
#: Where the heartbeat Leases live unless set otherwise (the pod's namespace in a cluster).
HEARTBEAT_NAMESPACE: Final = "kubenova-system"


def heartbeat_lease(host: str) -> str:
    return HEARTBEAT_LEASE_PREFIX + host
