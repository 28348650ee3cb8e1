"""Placement, free of kopf and of the API: host states in, a decision out.

``hosts`` turns Hypervisor objects into :class:`hosts.HostState`; ``claims`` keeps what bound
and about-to-be-bound Servers take; ``placement.pick_host`` runs Nova-style filters and
weighers over them.
"""
