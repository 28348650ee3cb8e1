"""Thin, typed helpers over the Kubernetes client that the controller and the agent share:
typed reads (each object parsed into its model), server-side apply of status models (one field
manager per component, so each writes only its own fields), finalizers by JSON patch, and
Events with the object as their subject. ``dict[str, Any]`` lives here, at the edge, and
nowhere else in the product.

Every call has a client-side timeout: a vanished or half-open API server fails a call within
seconds instead of holding a thread forever."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants
from kubenova_api.common import KubeObject, StatusModel

log = logging.getLogger(__name__)

T = TypeVar("T")
Obj = TypeVar("Obj", bound=KubeObject)

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
APPLY_FIELD_VALIDATION = "Ignore"
"""``fieldValidation`` of every status apply. For server-side apply the API server refuses a
field its schema does not declare whatever this is set to (500 "field not declared in schema",
nothing stored), so Ignore loses no check; what it drops is the strict second parse of the YAML
body, done only to report duplicate keys and unknown fields as warnings, which kubenova never
reads and its serialiser never produces. That pass is a visible share of the API server's CPU in
a burst of status writes (README, "Sizing the control plane")."""
WRITES_KEPT = 4096
"""Objects whose last write :attr:`Kube.last_written` remembers."""
TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every request that is not a watch."""
CREDENTIALS_RECHECK_S = 10.0
"""At most how often a request looks at the client's credentials again (a token that
expires, a service account token the kubelet rotates): see :func:`api_client`."""


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
    hook = cast("CredentialHook | None", cfg.refresh_api_key_hook)
    if hook is not None:
        cfg.refresh_api_key_hook = _Recheck(CREDENTIALS_RECHECK_S, hook)  # type: ignore[assignment]
    cfg.retries = 3
    # Enough kept connections for the controller's binding writers, the Event recorder and
    # the other threads (the default, 5 per CPU, opens and drops connections under a burst).
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, 64)
    return client.ApiClient(cfg)


CredentialHook = Callable[[client.Configuration], None]


class _Recheck:
    """The client's credential hook, run at most once per ``seconds`` (the calls in between
    do nothing).

    The kubernetes client runs its credential refresh hook before *every* request; for a
    kubeconfig token or the pod's service account the hook copies the whole configuration
    again, and setting its host makes it read every proxy variable of the environment (70 µs
    of CPU per request or more, growing with the environment). Credentials are renewed ahead
    of their expiry (five minutes for a kubeconfig's exec or OIDC token, a minute for a service
    account token file), so a look every few seconds loses nothing."""

    def __init__(self, seconds: float, hook: CredentialHook) -> None:
        self.seconds = seconds
        self._hook = hook
        self._lock = threading.Lock()
        self._due = 0.0  # monotonic time of the next look; 0: at the first request

    def __call__(self, cfg: client.Configuration) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._due:
                return
            self._due = now + self.seconds
        self._hook(cfg)
        installed = cast("CredentialHook | None", cfg.refresh_api_key_hook)
        if installed is not None and installed is not self:
            # the client's hook puts itself back each time it runs
            self._hook = installed
            cfg.refresh_api_key_hook = self  # type: ignore[assignment]  # the client types it None


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


class RetryLater(Exception):
    """Not possible yet; try again after ``delay`` seconds. The one error type for "retry
    later" in kubenova (as kopf's TemporaryError): ``reason`` is a CamelCase word a condition
    can carry, the message says what to wait for."""

    def __init__(self, reason: str, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay = delay


def is_transient(exc: BaseException) -> bool:
    """Whether an API error is worth retrying (conflicts, throttling, server trouble)."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 409, 429, 500, 502, 503, 504)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def is_overloaded(exc: BaseException) -> bool:
    """The API server refused for load (429), failed (5xx) or did not answer (any error that
    is not an API answer: refused or reset connections, timeouts). Nothing is wrong with the
    request: it is retried as it was, with back-off, and never answered with a heavier one (a
    LIST, a larger write)."""
    if isinstance(exc, ApiException):
        return exc.status in (0, None, 429) or exc.status >= 500
    return True


def is_status(exc: BaseException, *codes: int) -> bool:
    """Whether ``exc`` is an API error with one of these HTTP status codes."""
    return isinstance(exc, ApiException) and exc.status in codes


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
    def to(cls, obj: KubeObject) -> ObjectRef:
        """The reference of a parsed object."""
        meta = obj.metadata
        return cls(obj.KIND, obj.PLURAL, meta.name, meta.namespace, meta.uid or None)

    @classmethod
    def named(
        cls, kind: type[KubeObject], name: str, namespace: str | None = None, uid: str = ""
    ) -> ObjectRef:
        """The reference of an object of ``kind`` by name."""
        return cls(kind.KIND, kind.PLURAL, name, namespace, uid or None)


class EventRecorder:
    """Posts Events from a queue, in order, on a thread of its own started at the first Event.

    Events are best effort: one the API server refuses is logged and dropped, and when
    ``capacity`` Events are already waiting (an API server that is down or far behind) a new
    one is dropped and counted rather than kept without bound."""

    def __init__(self, core: client.CoreV1Api, capacity: int = 1000) -> None:
        self._core = core
        self._queue: queue.Queue[tuple[str, client.CoreV1Event] | threading.Event] = queue.Queue(
            capacity
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def record(self, namespace: str, body: client.CoreV1Event) -> None:
        self._start()
        try:
            self._queue.put_nowait((namespace, body))
        except queue.Full:
            self.dropped += 1
            log.warning(
                "Event %s dropped: %d Events wait already", body.reason, self._queue.qsize()
            )

    def flush(self, timeout: float) -> bool:
        """Wait until every Event queued so far is posted or given up; False on timeout."""
        if self._thread is None:
            return True
        reached = threading.Event()  # a marker: the thread reaches it after all before it
        try:
            self._queue.put(reached, timeout=timeout)
        except queue.Full:
            return False
        return reached.wait(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._post, name="events", daemon=True)
                self._thread.start()

    def _post(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            namespace, body = item
            try:
                self._core.create_namespaced_event(namespace, body, _request_timeout=TIMEOUT)
            except Exception as exc:
                name = body.involved_object.name
                log.warning("could not record event %s on %s: %s", body.reason, name, exc)


class Kube:
    """The calls kubenova makes, under one field manager."""

    def __init__(self, api: client.ApiClient, field_manager: str, component: str) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.field_manager = field_manager
        self.component = component
        self.host = os.uname().nodename
        self.events = EventRecorder(self.core)
        self.last_written: dict[str, str] = {}
        """uid -> resourceVersion of the object after this component's last write to it (the
        most recent ``WRITES_KEPT``): lets a controller tell a cached copy that predates its
        own write from a current one."""
        self._written_lock = threading.Lock()

    # -- raw calls (the edge: plain JSON in and out)
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
        kwargs.setdefault("_request_timeout", TIMEOUT)
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

    def get_raw(self, ref: ObjectRef) -> dict[str, Any]:
        return self._on(
            ref, self.custom.get_namespaced_custom_object, self.custom.get_cluster_custom_object
        )

    def list_raw(self, plural: str, namespace: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """One LIST (``items`` and ``metadata.resourceVersion``), cluster-wide or in one
        namespace."""
        kwargs.setdefault("_request_timeout", TIMEOUT)
        if namespace:
            out = self.custom.list_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, plural, **kwargs
            )
        else:
            out = self.custom.list_cluster_custom_object(
                constants.GROUP, constants.VERSION, plural, **kwargs
            )
        return as_dict(out)

    # -- typed reads
    def get(self, kind: type[Obj], name: str, namespace: str | None = None) -> Obj | None:
        """The object of ``kind`` by name, parsed; None when it does not exist."""
        try:
            return kind.parse(self.get_raw(ObjectRef.named(kind, name, namespace)))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_of(
        self, kind: type[Obj], namespace: str | None = None, field_selector: str | None = None
    ) -> list[Obj]:
        """Every object of ``kind`` (matching ``field_selector``), parsed."""
        kwargs = {"field_selector": field_selector} if field_selector else {}
        listing = self.list_raw(kind.PLURAL, namespace, **kwargs)
        return [kind.parse(item) for item in listing.get("items", [])]

    def create(self, obj: KubeObject) -> dict[str, Any]:
        """Create ``obj`` (``metadata.generateName`` works); returns the stored body."""
        body = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["apiVersion"] = constants.API_VERSION
        body["kind"] = obj.KIND
        body["metadata"] = obj.metadata.model_dump(mode="json", exclude_defaults=True)
        body.pop("status", None)
        meta = obj.metadata
        if meta.namespace:
            out = self.custom.create_namespaced_custom_object(
                constants.GROUP,
                constants.VERSION,
                meta.namespace,
                obj.PLURAL,
                body,
                _request_timeout=TIMEOUT,
            )
        else:
            out = self.custom.create_cluster_custom_object(
                constants.GROUP, constants.VERSION, obj.PLURAL, body, _request_timeout=TIMEOUT
            )
        return as_dict(out)

    # -- writes
    def apply_status(
        self,
        ref: ObjectRef,
        status: StatusModel,
        *,
        resource_version: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply of the fields set on ``status`` under this component's field
        manager. With ``resource_version`` the write is conditional: 409 Conflict if the object
        changed. ``force`` takes over fields another manager owns; without it such a write is
        refused with 409 (a second writer shows up instead of being hidden)."""
        body: dict[str, Any] = {
            "apiVersion": constants.API_VERSION,
            "kind": ref.kind,
            "metadata": {"name": ref.name},
            "status": status.to_apply(),
        }
        if resource_version is not None:
            body["metadata"]["resourceVersion"] = resource_version
        if ref.namespace:
            body["metadata"]["namespace"] = ref.namespace
        return self._write(
            ref,
            self.custom.patch_namespaced_custom_object_status,
            self.custom.patch_cluster_custom_object_status,
            body,
            field_manager=self.field_manager,
            field_validation=APPLY_FIELD_VALIDATION,
            force=force,
            _content_type=APPLY,
        )

    def json_patch(self, ref: ObjectRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._write(
            ref,
            self.custom.patch_namespaced_custom_object,
            self.custom.patch_cluster_custom_object,
            ops,
            _content_type=JSON_PATCH,
        )

    def _write(
        self,
        ref: ObjectRef,
        namespaced: Callable[..., Any],
        cluster: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """:meth:`_on` for a write: every write records the resourceVersion it left in
        :attr:`last_written`."""
        out = self._on(ref, namespaced, cluster, *args, **kwargs)
        meta = out.get("metadata") or {}
        uid, version = meta.get("uid"), meta.get("resourceVersion")
        if uid and version:
            with self._written_lock:
                self.last_written.pop(uid, None)  # re-inserted last: oldest first
                self.last_written[uid] = version
                if len(self.last_written) > WRITES_KEPT:
                    self.last_written.pop(next(iter(self.last_written)), None)
        return out

    def json_patch_status(self, ref: ObjectRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch of the status subresource (``remove`` ops drop fields whatever manager
        owns them; a ``test`` of ``/metadata/resourceVersion`` makes it conditional)."""
        return self._write(
            ref,
            self.custom.patch_namespaced_custom_object_status,
            self.custom.patch_cluster_custom_object_status,
            ops,
            field_manager=self.field_manager,
            _content_type=JSON_PATCH,
        )

    def merge_patch(self, ref: ObjectRef, patch: dict[str, Any]) -> dict[str, Any]:
        return self._write(
            ref,
            self.custom.patch_namespaced_custom_object,
            self.custom.patch_cluster_custom_object,
            patch,
        )

    def add_finalizer(self, obj: Obj, name: str) -> Obj:
        """``obj`` with finalizer ``name`` added unless present, guarded by resourceVersion.

        A cached copy may lag behind this component's own last write: when the guard fails,
        the object is read again (the finalizer may be there already) and the add retried."""
        kind = type(obj)
        for _ in range(3):
            meta = obj.metadata
            if name in meta.finalizers:
                return obj
            ops: list[dict[str, Any]] = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resourceVersion}
            ]
            if meta.finalizers:
                ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": name})
            else:
                ops.append({"op": "add", "path": "/metadata/finalizers", "value": [name]})
            ref = ObjectRef.to(obj)
            try:
                return kind.parse(self.json_patch(ref, ops))
            except ApiException as exc:
                if exc.status not in (409, 422):  # a failed "test" is a 422
                    raise
            obj = kind.parse(self.get_raw(ref))
        raise RetryLater("Conflict", f"{obj.full_name} keeps changing; adding {name} later", 1.0)

    def remove_finalizer(self, ref: ObjectRef, name: str) -> None:
        """Remove finalizer ``name`` (no-op when it or the object is gone)."""
        for _ in range(5):
            try:
                body = self.get_raw(ref)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
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
        labels: dict[str, str] | None = None,
        owner: ObjectRef | None = None,
    ) -> None:
        """Create or replace a ConfigMap (owned by ``owner``, so it goes when the owner goes)."""
        meta = client.V1ObjectMeta(
            name=name, namespace=namespace, annotations=annotations, labels=labels
        )
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
            self.core.replace_namespaced_config_map(name, namespace, body, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_config_map(namespace, body, _request_timeout=TIMEOUT)

    def event(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        """Record an Event about ``ref``: best effort, and off the caller's path (as client-go's
        recorder): the Event is queued and posted by the recorder's thread, in order, so a
        busy API server never holds up the binding or the reconcile that reports it."""
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
        self.events.record(namespace, body)

    def flush_events(self, timeout: float = 5.0) -> bool:
        """Wait until the Events recorded so far are posted (or dropped); False on timeout."""
        return self.events.flush(timeout)
