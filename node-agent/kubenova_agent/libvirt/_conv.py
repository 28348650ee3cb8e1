"""Conversion of libvirt's exceptions into :mod:`errors` (the one place that inspects them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt

from kubenova_agent.libvirt import errors

_TRANSIENT_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_OPERATION_INVALID,
}


def convert(exc: libvirt.libvirtError) -> errors.HypervisorError:
    code = exc.get_error_code() or 0
    message = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return errors.DomainNotFound(message, code=code)
    transient = code in _TRANSIENT_CODES or exc.get_error_domain() == libvirt.VIR_FROM_RPC
    return errors.HypervisorError(message, transient=transient, code=code)


def pool_busy(exc: libvirt.libvirtError) -> bool:
    """Whether libvirt refused to refresh a storage pool because a volume of it is being
    built right now (``pool 'x' has asynchronous jobs running.``, an internal error by its
    code): a moment's wait, not a fault."""
    return exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and (
        "asynchronous jobs running" in (exc.get_error_message() or "")
    )


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Run a block of libvirt calls; libvirt errors come out as :class:`HypervisorError`."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise convert(exc) from exc
