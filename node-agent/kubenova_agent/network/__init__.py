"""Host-side networking of the agent, the way Neutron's linuxbridge agent does it, without
Neutron: per network a Linux bridge; for a tenant network a VXLAN device (one VNI per network,
``nolearning``) whose unicast flood entries are kept equal to the hosts that run the network's
guests (l2population); for a provider network the host's LAN interface (flat, or a VLAN
sub-interface) in the bridge; per network and host a small namespace with the network's
gateway address (tenant: the same address and MAC on every host, a distributed router) or
this host's DHCP address (provider), where a dnsmasq answers DHCP for this host's guests only,
and, when the network asks for egress, SNAT towards the underlay.

Modules: :mod:`.types` (what a host should have, plain data), :mod:`.cmd` (the one place that
runs ``ip``, ``bridge``, ``nft`` and ``sysctl``), :mod:`.links` (bridges, VXLAN, veths, VLANs,
flood entries), :mod:`.dhcp` (dnsmasq), :mod:`.nat` (nftables), :mod:`.host` (:func:`apply`:
converge this host to a list of :class:`~.types.NetworkPlan`, removing what is no longer
planned) and :mod:`.guestdata` (Nova's ``network_data.json`` for the config drive).
"""
