"""kubenova's node agent: makes the Servers bound to its host real through libvirt."""
