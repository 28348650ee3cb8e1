"""``make lint``'s check of the Helm chart: ``helm lint --strict``, then every manifest the
chart renders (with its defaults and with every option switched) and the examples, checked by
kubeconform against JSON schemas — strictly: an unknown field is an error.

kubeconform fetches its schemas from the internet by default; here they are made offline:
the built-in kinds from the OpenAPI v3 documents shipped in the very Kubernetes module the
test bed's binaries are built from (``api/openapi-spec/v3``), kubenova's own kinds from its
generated CRDs. Each schema file is one kind's schema with the document's component schemas
beside it, so its ``$ref``s resolve within the file.

    python -m kubenova_devenv.chartcheck
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import yaml

from kubenova_devenv import paths

CHART = paths.REPO / "deploy" / "helm" / "kubenova"
K8S_MODULE = "k8s.io/kubernetes"
#: The module version kube-apiserver is built from (hack/tools/kube/go.mod).
_GO_MOD = paths.REPO / "hack" / "tools" / "kube" / "go.mod"
#: Value sets rendered besides the defaults: every switch of the chart flipped once.
VALUE_SETS: tuple[tuple[str, ...], ...] = (
    (),
    (
        "--set",
        "controller.podDisruptionBudget.enabled=false,metrics.service.enabled=false",
        "--set",
        "agent.migrationByNodeIP=false,agent.virtType=qemu,image.tag=dev",
        "--set",
        "controller.extraArgs={--cpu-allocation-ratio=8},agent.extraArgs={--cpu-mode=cluster}",
        "--set",
        "imagePullSecrets[0].name=registry,agent.priorityClassName=system-node-critical",
        "--set",
        "controller.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=role",
        "--set",
        "controller.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ),
    # An API server that serves MutatingAdmissionPolicy: the policy that gives every Server
    # the agents' finalizer at birth is rendered too.
    ("--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"),
)


def kubernetes_version() -> str:
    match = re.search(rf"^\s*require {re.escape(K8S_MODULE)} (v\S+)", _GO_MOD.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no `require {K8S_MODULE}` in {_GO_MOD}")
    return match.group(1)


def _openapi_dir(version: str) -> pathlib.Path:
    """The module's OpenAPI v3 documents (``go mod download``: from the module cache, or the
    Go module proxy once)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{K8S_MODULE}@{version}"],
        cwd=_GO_MOD.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return pathlib.Path(json.loads(out.stdout)["Dir"]) / "api" / "openapi-spec" / "v3"


def _strict(node: Any) -> Any:
    """Objects with declared properties accept no others (kubeconform's -strict schemas)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    # The value of ``properties`` maps field names to schemas: never read as a schema itself
    # (a field may be named ``properties``, as an Image's is).
    out = {
        k: {name: _strict(s) for name, s in v.items()}
        if k == "properties" and isinstance(v, dict)
        else _strict(v)
        for k, v in node.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _location(root: pathlib.Path, api_version: str, kind: str) -> pathlib.Path:
    """Where kubeconform looks, with ``schema_location`` below."""
    parts = api_version.split("/")
    return root / parts[0] / parts[-1] / f"{kind.lower()}.json"


def schema_location(root: pathlib.Path) -> str:
    return f"{root}/{{{{ .Group }}}}/{{{{ .ResourceAPIVersion }}}}/{{{{ .ResourceKind }}}}.json"


def kubernetes_schemas() -> pathlib.Path:
    """JSON schemas of every built-in kind, made once per Kubernetes version (cached)."""
    version = kubernetes_version()
    root = paths.cache_dir() / "schemas" / f"kubernetes-{version}-r2"
    if (root / ".done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for doc_path in sorted(_openapi_dir(version).glob("api*__v*_openapi.json")):
        components = json.loads(doc_path.read_text())["components"]["schemas"]
        strict_components = _strict(components)
        for schema in strict_components.values():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                group, ver = gvk["group"], gvk["version"]
                target = _location(root, f"{group}/{ver}" if group else ver, gvk["kind"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(
                    json.dumps({**schema, "components": {"schemas": strict_components}})
                )
    (root / ".done").write_text(version + "\n")
    return root


def crd_schemas(crds: list[dict[str, Any]], root: pathlib.Path) -> None:
    """JSON schemas of the kinds the CRDs define (the custom objects' own fields strictly;
    ``metadata`` as Kubernetes defines it)."""
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string"}
            props["kind"] = {"type": "string"}
            props["metadata"] = {"type": "object"}
            target = _location(root, f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema))


def _run(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def main() -> int:
    helm, kubeconform = str(paths.binary("helm")), str(paths.binary("kubeconform"))
    print(_run([helm, "lint", "--strict", str(CHART)]).strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="kubenova-chartcheck-") as tmp:
        work = pathlib.Path(tmp)
        manifests = []
        for i, values in enumerate(VALUE_SETS):
            rendered = _run(
                [
                    helm,
                    "template",
                    "kubenova",
                    str(CHART),
                    "-n",
                    "kubenova",
                    "--include-crds",
                    *values,
                ]
            )
            manifests.append(work / f"rendered-{i}.yaml")
            manifests[-1].write_text(rendered)
        crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
        crd_schemas(crds, work / "crd-schemas")
        examples = sorted(str(p) for p in (paths.REPO / "examples").glob("*.yaml"))
        out = _run(
            [
                kubeconform,
                "-strict",
                "-summary",
                "-schema-location",
                schema_location(kubernetes_schemas()),
                "-schema-location",
                schema_location(work / "crd-schemas"),
                *map(str, manifests),
                *examples,
            ]
        )
        print(out.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
