"""The host's heartbeat Lease (as each kubelet renews a Lease in ``kube-node-lease``, KEP-589).

Renewing a Lease is a small update that only the controller watches. Before it, the heartbeat
was the whole Hypervisor status applied every few seconds (CPU features, machine types,
firmwares: the API server's most expensive request, fanned out to every Hypervisor watcher);
now that status is written only when a figure in it changes, or every
``status_report_seconds``."""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants, kube

log = logging.getLogger(__name__)


def micro_time(t: dt.datetime) -> str:
    """A ``metav1.MicroTime``: always six fraction digits (``isoformat`` drops them at .0)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Renewal(enum.Enum):
    renewed = "renewed"
    busy = "busy"
    """The API server refused for load, failed or did not answer: try again next beat."""
    unavailable = "unavailable"
    """The Lease cannot be written here (no namespace, no permission): the agent heartbeats
    in its Hypervisor status instead."""


class HeartbeatLease:
    """This host's Lease ``hypervisor-<host>`` in ``namespace``, renewed by :meth:`renew`."""

    def __init__(
        self, api: client.ApiClient, namespace: str, host: str, duration_seconds: float
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.host = host
        self.name = constants.heartbeat_lease(host)
        self._duration = max(1, round(duration_seconds))
        self._lease: dict[str, Any] | None = None
        """The Lease as last written or read (its resourceVersion makes the next write
        conditional, as the kubelet's lease controller does)."""
        self._failing = False

    def _spec(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "holderIdentity": self.host,
            "leaseDurationSeconds": self._duration,
            "renewTime": micro_time(now),
        }

    def _body(self, now: dt.datetime) -> Any:  # a Lease as JSON (the client takes it as is)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {constants.HEARTBEAT_LEASE_LABEL: self.host},
            },
            "spec": self._spec(now),
        }

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(response.data)
        return out

    def _write(self, now: dt.datetime) -> None:
        timeout = kube.TIMEOUT
        if self._lease is None:
            try:
                self._lease = self._json(
                    self._api.read_namespaced_lease(
                        self.name, self.namespace, _preload_content=False, _request_timeout=timeout
                    )
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self._lease = self._json(
                    self._api.create_namespaced_lease(
                        self.namespace,
                        self._body(now),
                        _preload_content=False,
                        _request_timeout=timeout,
                    )
                )
                return
        body: Any = dict(self._lease)
        body["metadata"] = dict(body["metadata"])
        body["metadata"]["labels"] = {
            **(body["metadata"].get("labels") or {}),
            constants.HEARTBEAT_LEASE_LABEL: self.host,
        }
        body["spec"] = {**(body.get("spec") or {}), **self._spec(now)}
        self._lease = self._json(
            self._api.replace_namespaced_lease(
                self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout
            )
        )

    def renew(self) -> Renewal:
        """Renew the Lease (making it if missing). A failure is logged when it starts and when
        it ends, not on every beat."""
        now = dt.datetime.now(dt.UTC)
        error: Exception | None = None
        for _ in range(2):  # a conflict (someone else wrote it): read it again, once
            try:
                self._write(now)
                error = None
                break
            except ApiException as exc:
                error = exc
                if exc.status != 429:  # refused for load: the copy held is still current
                    self._lease = None
                if exc.status != 409:
                    break
            except Exception as exc:  # the API server unreachable, a timeout
                self._lease = None
                error = exc
                break
        if error is None:
            if self._failing:
                log.info("heartbeat Lease %s/%s renewed again", self.namespace, self.name)
            self._failing = False
            return Renewal.renewed
        outcome = Renewal.busy if kube.is_overloaded(error) else Renewal.unavailable
        if not self._failing:
            reason = (
                f"{error.status} {error.reason}" if isinstance(error, ApiException) else str(error)
            )
            log.warning(
                "cannot renew the heartbeat Lease %s/%s (%s)%s",
                self.namespace,
                self.name,
                reason,
                ": the Hypervisor status carries the heartbeat until it works"
                if outcome is Renewal.unavailable
                else "; trying again next beat",
            )
        self._failing = True
        return outcome
