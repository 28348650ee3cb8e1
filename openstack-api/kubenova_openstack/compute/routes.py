"""Every Compute path the facade answers, and its handler."""

from __future__ import annotations

from kubenova_openstack.compute import (
    actions,
    flavors,
    groups,
    history,
    hosts,
    images,
    keypairs,
    networks,
    quotas,
    servers,
)
from kubenova_openstack.web import Router


def register(r: Router) -> None:
    r.add("GET", "/servers", servers.index)
    r.add("POST", "/servers", servers.create)
    r.add("GET", "/servers/detail", servers.detail)
    r.add("GET", "/servers/{id}", servers.show)
    r.add("PUT", "/servers/{id}", servers.update)
    r.add("DELETE", "/servers/{id}", servers.delete)
    r.add("POST", "/servers/{id}/action", actions.action)
    r.add("GET", "/servers/{id}/metadata", servers.metadata_index)
    r.add("PUT", "/servers/{id}/metadata", servers.metadata_replace)
    r.add("POST", "/servers/{id}/metadata", servers.metadata_merge)
    r.add("GET", "/servers/{id}/metadata/{key}", servers.metadata_show)
    r.add("PUT", "/servers/{id}/metadata/{key}", servers.metadata_put)
    r.add("DELETE", "/servers/{id}/metadata/{key}", servers.metadata_delete)
    r.add("GET", "/flavors", flavors.index)
    r.add("POST", "/flavors", flavors.create)
    r.add("GET", "/flavors/detail", flavors.detail)
    r.add("GET", "/flavors/{id}", flavors.show)
    r.add("DELETE", "/flavors/{id}", flavors.delete)
    r.add("GET", "/flavors/{id}/os-extra_specs", flavors.extra_specs)
    r.add("POST", "/flavors/{id}/os-extra_specs", flavors.extra_specs_change)
    r.add("GET", "/flavors/{id}/os-extra_specs/{key}", flavors.extra_spec)
    r.add("PUT", "/flavors/{id}/os-extra_specs/{key}", flavors.extra_specs_change)
    r.add("DELETE", "/flavors/{id}/os-extra_specs/{key}", flavors.extra_specs_change)
    r.add("GET", "/os-keypairs", keypairs.index)
    r.add("POST", "/os-keypairs", keypairs.create)
    r.add("GET", "/os-keypairs/{name}", keypairs.show)
    r.add("DELETE", "/os-keypairs/{name}", keypairs.delete)
    r.add("GET", "/images", images.index)
    r.add("GET", "/images/detail", images.detail)
    r.add("GET", "/images/{id}", images.show)
    r.add("GET", "/servers/{id}/os-instance-actions", history.actions_index)
    r.add("GET", "/servers/{id}/os-instance-actions/{request_id}", history.action_show)
    r.add("GET", "/servers/{id}/migrations", history.server_migrations)
    r.add("DELETE", "/servers/{id}/migrations/{mid}", history.abort_migration)
    r.add("GET", "/os-migrations", history.migrations)
    r.add("GET", "/os-hypervisors", hosts.hypervisors)
    r.add("GET", "/os-hypervisors/detail", hosts.hypervisors_detail)
    r.add("GET", "/os-hypervisors/statistics", hosts.statistics)
    r.add("GET", "/os-hypervisors/{pattern}/search", hosts.search)
    r.add("GET", "/os-hypervisors/{pattern}/servers", hosts.servers_on)
    r.add("GET", "/os-hypervisors/{id}/uptime", hosts.uptime)
    r.add("GET", "/os-hypervisors/{id}", hosts.hypervisor)
    r.add("GET", "/os-services", hosts.services)
    r.add("GET", "/os-availability-zone", hosts.zones)
    r.add("GET", "/os-availability-zone/detail", hosts.zones_detail)
    r.add("GET", "/limits", hosts.limits)
    r.add("GET", "/os-aggregates", hosts.aggregates)
    r.add("GET", "/os-networks", networks.index)
    r.add("GET", "/os-networks/{id}", networks.show)
    r.add("GET", "/os-quota-sets/{tenant_id}", quotas.show)
    r.add("PUT", "/os-quota-sets/{tenant_id}", quotas.update)
    r.add("DELETE", "/os-quota-sets/{tenant_id}", quotas.delete)
    r.add("GET", "/os-quota-sets/{tenant_id}/detail", quotas.detail)
    r.add("GET", "/os-quota-sets/{tenant_id}/defaults", quotas.defaults)
    r.add("GET", "/os-server-groups", groups.index)
    r.add("POST", "/os-server-groups", groups.create)
    r.add("GET", "/os-server-groups/{id}", groups.show)
    r.add("DELETE", "/os-server-groups/{id}", groups.delete)


#: Collections of Nova's Compute API kubenova does not serve (networking and volume proxies,
#: nova-network, cells v1, …): a path that starts with one is answered 404, never read as a
#: project id (``/v2.1/<project>`` answers the version document).
NOT_SERVED = frozenset(
    {
        "os-agents", "os-assisted-volume-snapshots", "os-baremetal-nodes", "os-cells",
        "os-certificates", "os-cloudpipe", "os-console-auth-tokens", "os-fixed-ips",
        "os-floating-ip-dns", "os-floating-ip-pools", "os-floating-ips", "os-floating-ips-bulk",
        "os-fping", "os-hosts", "os-instance_usage_audit_log", "os-quota-class-sets",
        "os-security-group-default-rules", "os-security-group-rules", "os-security-groups",
        "os-server-external-events", "os-simple-tenant-usage", "os-snapshots",
        "os-tenant-networks", "os-virtual-interfaces", "os-volumes", "os-volumes_boot",
        "extensions",
    }
)  # fmt: skip
