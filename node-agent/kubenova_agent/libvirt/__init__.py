"""The agent's libvirt layer: the only code in kubenova that imports ``libvirt``.

``host`` holds the connection and domain events, ``domain_xml`` builds and reads domain XML
with lxml, ``guest`` acts on one domain, ``storage`` manages the disks in a libvirt pool.
Everything above this layer sees :class:`errors.HypervisorError` and plain data, never libvirt.
"""
