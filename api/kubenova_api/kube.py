"""Thin, typed helpers over the Kubernetes client that the controller and the agent share:
server-side apply of status (one field manager per component, so each writes only its own
fields), finalizers by JSON patch, and Events with the object as their subject."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants

log = logging.getLogger(__name__)

T = TypeVar("T")

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"


def as_dict(obj: object) -> dict[str, Any]:
    """The custom-objects API returns plain JSON dicts, typed as ``object``."""
    return cast(dict[str, Any], obj)


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from ``kubeconfig``, ``$KUBECONFIG``, or the pod's service account."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    cfg = client.Configuration()
    if path:
        config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    cfg.retries = 3
    return client.ApiClient(cfg)


def connection_info(api: client.ApiClient) -> Any:
    """kopf's ConnectionInfo for the same server and credentials as ``api``."""
    import kopf  # noqa: PLC0415 - only the controller needs kopf

    cfg = api.configuration
    auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken") or ""
    scheme, _, token = str(auth).partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None if token else None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def is_transient(exc: BaseException) -> bool:
    """Whether an API error is worth retrying (conflicts, throttling, server trouble)."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 409, 429, 500, 502, 503, 504)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def retrying(fn: Callable[[], T], attempts: int = 5, first_delay: float = 0.2) -> T:
    """Call ``fn``, retrying transient API errors with exponential back-off."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            log.debug("transient API error (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """Enough of an object to write to it and to name it in an Event."""

    kind: str
    plural: str
    name: str
    namespace: str | None = None
    uid: str | None = None

    @classmethod
    def of(cls, body: dict[str, Any], kind: str, plural: str) -> ObjectRef:
        meta = body.get("metadata", {})
        return cls(kind, plural, meta["name"], meta.get("namespace"), meta.get("uid"))


class Kube:
    """The calls kubenova makes, under one field manager."""

    def __init__(self, api: client.ApiClient, field_manager: str, component: str) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.field_manager = field_manager
        self.component = component
        self.host = os.uname().nodename

    # -- reads
    def _on(
        self,
        ref: ObjectRef,
        namespaced: Callable[..., Any],
        cluster: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Call the namespaced or the cluster-scoped form of a custom-object method on
        ``ref``, whichever its scope needs."""
        if ref.namespace:
            out = namespaced(
                constants.GROUP,
                constants.VERSION,
                ref.namespace,
                ref.plural,
                ref.name,
                *args,
                **kwargs,
            )
        else:
            out = cluster(constants.GROUP, constants.VERSION, ref.plural, ref.name, *args, **kwargs)
        return as_dict(out)

    def get(self, ref: ObjectRef) -> dict[str, Any]:
        return self._on(
            ref, self.custom.get_namespaced_custom_object, self.custom.get_cluster_custom_object
        )

    def get_or_none(self, ref: ObjectRef) -> dict[str, Any] | None:
        try:
            return self.get(ref)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- writes
    def apply_status(
        self, ref: ObjectRef, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """Server-side apply of ``status`` under this component's field manager. With
        ``resource_version`` the write is conditional: 409 Conflict if the object changed."""
        body: dict[str, Any] = {
            "apiVersion": constants.API_VERSION,
            "kind": ref.kind,
            "metadata": {"name": ref.name},
            "status": status,
        }
        if resource_version is not None:
            body["metadata"]["resourceVersion"] = resource_version
        if ref.namespace:
            body["metadata"]["namespace"] = ref.namespace
        return self._on(
            ref,
            self.custom.patch_namespaced_custom_object_status,
            self.custom.patch_cluster_custom_object_status,
            body,
            field_manager=self.field_manager,
            force=True,
            _content_type=APPLY,
        )

    def json_patch(self, ref: ObjectRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._on(
            ref,
            self.custom.patch_namespaced_custom_object,
            self.custom.patch_cluster_custom_object,
            ops,
            _content_type=JSON_PATCH,
        )

    def add_finalizer(self, ref: ObjectRef, body: dict[str, Any], name: str) -> dict[str, Any]:
        """Add finalizer ``name`` unless present; guarded by resourceVersion (409 on a race)."""
        meta = body["metadata"]
        current = meta.get("finalizers") or []
        if name in current:
            return body
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]
        if current:
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": name})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [name]})
        return self.json_patch(ref, ops)

    def remove_finalizer(self, ref: ObjectRef, name: str) -> None:
        """Remove finalizer ``name`` (no-op when it or the object is gone)."""
        for _ in range(5):
            body = self.get_or_none(ref)
            if body is None:
                return
            current = body["metadata"].get("finalizers") or []
            if name not in current:
                return
            index = current.index(name)
            ops = [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": name},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ]
            try:
                self.json_patch(ref, ops)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status not in (409, 422):
                    raise
        raise RuntimeError(f"could not remove finalizer {name} from {ref.name}")

    def put_configmap(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        *,
        annotations: dict[str, str] | None = None,
        owner: ObjectRef | None = None,
    ) -> None:
        """Create or replace a ConfigMap (owned by ``owner``, so it goes when the owner goes)."""
        meta = client.V1ObjectMeta(name=name, namespace=namespace, annotations=annotations)
        if owner is not None and owner.uid:
            meta.owner_references = [
                client.V1OwnerReference(
                    api_version=constants.API_VERSION,
                    kind=owner.kind,
                    name=owner.name,
                    uid=owner.uid,
                )
            ]
        body = client.V1ConfigMap(metadata=meta, data=data)
        try:
            self.core.replace_namespaced_config_map(name, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_config_map(namespace, body)

    def event(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        """Record an Event about ``ref`` (best effort: a failed Event never fails the work)."""
        now = dt.datetime.now(dt.UTC)
        namespace = ref.namespace or "default"
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{ref.name}.{uuid.uuid4().hex[:16]}", namespace=namespace
            ),
            involved_object=client.V1ObjectReference(
                api_version=constants.API_VERSION,
                kind=ref.kind,
                name=ref.name,
                namespace=ref.namespace,
                uid=ref.uid,
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=self.component, host=self.host),
            reporting_component=self.component,
            reporting_instance=self.host,
        )
        try:
            self.core.create_namespaced_event(namespace, body)
        except Exception as exc:
            log.warning("could not record event %s on %s: %s", reason, ref.name, exc)
