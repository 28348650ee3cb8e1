"""Errors of the hypervisor layer, free of libvirt types so callers need not import it."""

from __future__ import annotations


class HypervisorError(Exception):
    """A libvirt call failed. ``transient`` says whether trying again later may help."""

    def __init__(self, message: str, *, transient: bool = False, code: int = 0) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code


class DomainNotFound(HypervisorError):
    """No domain with that UUID on this host."""
