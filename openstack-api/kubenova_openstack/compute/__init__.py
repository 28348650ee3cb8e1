"""Compute API v2.1 (Nova) over Servers, Flavors, Hypervisors, ServerGroups and
ServerMigrations."""
