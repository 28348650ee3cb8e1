"""Fixtures shared by every test: helpers to wait on real objects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from kubenova_devenv import stack

UNHELD: dict[str, Any] = {"metadata": {"finalizers": None}}
"""A merge patch that takes every finalizer off an object."""


def eventually(
    check: Callable[[], Any], timeout: float = 60.0, step: float = 0.2, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test with ``what`` if not."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def delete_unheld(bed: stack.Stack, namespace: str, *names: str) -> None:
    """Delete Servers of a bed where neither the controller nor an agent runs for them.

    Every Server is born with the agents' finalizer (deploy/admission/domain-finalizer.yaml),
    which the agent that ran it, or the controller for a Server no host took, removes; with
    neither running, it is taken off here first. No names: every Server of ``namespace``."""
    if not names:
        listed = bed.kubectl("get", "servers", "-n", namespace, "-o", "name").stdout.split()
        names = tuple(n.rpartition("/")[2] for n in listed)
    patch = json.dumps(UNHELD)
    for name in names:
        bed.kubectl("patch", "server", name, "-n", namespace, "--type=merge", "-p", patch)
    if names:
        bed.kubectl("delete", "servers", *names, "-n", namespace, "--timeout=30s", timeout=45)
