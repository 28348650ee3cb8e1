"""The client's credentials are looked at again at most every few seconds, not before every
request, and a credential that expires is still renewed (kubenova_api.kube.api_client)."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import sys

import pytest
from kubernetes.config import kube_config

from kubenova_api import kube

# An exec credential plugin (as a cloud's "get-token" command): a new token each time it runs,
# already expired, so the client's own hook would run it again before every request.
PLUGIN = """
import json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": f"token-{n}", "expirationTimestamp": "2020-01-01T00:00:00Z"},
}))
"""


def _kubeconfig(tmp_path: pathlib.Path, user: dict[str, object]) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def _bearer(api: object) -> str:
    settings = api.configuration.auth_settings()  # type: ignore[attr-defined]
    return str(settings["BearerToken"]["value"])


def test_a_static_token_is_not_copied_again_before_every_request(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = []
    original = kube_config.KubeConfigLoader._set_config

    def counted(self: kube_config.KubeConfigLoader, cfg: object) -> None:
        runs.append(dt.datetime.now())
        original(self, cfg)

    monkeypatch.setattr(kube_config.KubeConfigLoader, "_set_config", counted)
    api = kube.api_client(_kubeconfig(tmp_path, {"token": "static"}))
    loaded = len(runs)
    for _ in range(200):  # what 200 requests do first
        assert _bearer(api) == "Bearer static"
    assert len(runs) - loaded <= 1, f"the credentials were copied {len(runs) - loaded} times"


def test_an_expiring_token_is_still_renewed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    counter = tmp_path / "runs"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), str(counter)],
            "interactiveMode": "Never",
        }
    }
    clock = [1000.0]
    monkeypatch.setattr(kube.time, "monotonic", lambda: clock[0])
    api = kube.api_client(_kubeconfig(tmp_path, user))
    first = _bearer(api)
    assert first.startswith("Bearer token-")
    for _ in range(20):  # within the interval: the same token, the plugin not run again
        assert _bearer(api) == first
    clock[0] += kube.CREDENTIALS_RECHECK_S + 0.1
    renewed = _bearer(api)
    assert renewed.startswith("Bearer token-") and renewed != first
