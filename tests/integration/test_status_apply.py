"""Status writes by server-side apply against a real API server: they are sent with
``fieldValidation=Ignore`` (no strict second parse of each body, a visible share of the API
server's CPU in a burst) and that loses no check: a field the schema does not declare — what a
newer component might send to an older CRD — is still refused and nothing of it is stored."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client.exceptions import ApiException
from pydantic import Field

from kubenova_api import kube
from kubenova_api.common import ObjectMeta
from kubenova_api.resources import Server, ServerSpec, ServerStatus
from kubenova_devenv import stack

NS = "default"


class NewerServerStatus(ServerStatus):
    """A Server status as a later kubenova might write it: one field this CRD lacks."""

    futureField: str | None = Field(default=None)


def _server(k: kube.Kube, name: str) -> kube.ObjectRef:
    server = Server(
        metadata=ObjectMeta(name=name, namespace=NS),
        spec=ServerSpec(flavorRef="m1.tiny", imageRef="cirros"),
    )
    k.create(server)
    return kube.ObjectRef.to(server)


@pytest.fixture
def k(api: stack.Stack) -> kube.Kube:
    return kube.Kube(kube.api_client(str(api.cp.kubeconfig())), "apply-test", "apply-test")


def test_status_apply_asks_for_no_field_validation(
    k: kube.Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _server(k, "apply-fv")
    sent: list[tuple[str, str]] = []
    rest = k.api.rest_client
    real_request = rest.request

    def recording(method: str, url: str, *args: Any, **kw: Any) -> Any:
        sent.append((method, url))
        return real_request(method, url, *args, **kw)

    monkeypatch.setattr(rest, "request", recording)
    out = k.apply_status(ref, ServerStatus(nodeName="apply-host"))
    assert out["status"]["nodeName"] == "apply-host"
    patches = [urlsplit(url) for method, url in sent if method == "PATCH"]
    assert len(patches) == 1 and patches[0].path.endswith("/servers/apply-fv/status"), sent
    query = parse_qs(patches[0].query)
    assert query.get("fieldValidation") == [kube.APPLY_FIELD_VALIDATION] == ["Ignore"]
    assert query.get("fieldManager") == ["apply-test"]


def test_an_undeclared_status_field_is_still_refused(k: kube.Kube) -> None:
    ref = _server(k, "apply-unknown")
    with pytest.raises(ApiException) as refused:
        k.apply_status(ref, NewerServerStatus(nodeName="host-x", futureField="x"))
    assert "futureField" in str(refused.value.body), refused.value.body
    stored = k.get(Server, ref.name, NS)
    assert stored is not None
    assert stored.status.nodeName is None, "a refused apply stored part of its body"
    # The same write without the unknown field goes through.
    k.apply_status(ref, NewerServerStatus(nodeName="host-x"))
    stored = k.get(Server, ref.name, NS)
    assert stored is not None and stored.status.nodeName == "host-x"
