"""The image's build context and the chart's schema check: what they let through is what they
claim to, and the check really refuses a wrong manifest."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
import yaml

from kubenova_devenv import chartcheck, containerimage, paths


def test_dockerignore_admits_exactly_what_the_image_cache_key_hashes() -> None:
    lines = (paths.REPO / ".dockerignore").read_text().splitlines()
    admitted = [line[1:] for line in lines if line.startswith("!")]
    assert sorted(admitted) == sorted(containerimage.CONTEXT)
    copied = [
        line.split()[1]
        for line in (paths.REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    ]
    assert copied == ["pyproject.toml", "."]  # dependencies first, then the whole context


def test_the_content_key_changes_with_the_code(tmp_path: pathlib.Path) -> None:
    for name in (*containerimage.CONTEXT, "Dockerfile", ".dockerignore"):
        src = paths.REPO / name
        if src.is_dir():
            (tmp_path / name / "pkg").mkdir(parents=True)
            (tmp_path / name / "pkg" / "a.py").write_text("x = 1\n")
        else:
            (tmp_path / name).write_bytes(src.read_bytes())
    before = containerimage.content_key(tmp_path)
    (tmp_path / "api" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "api" / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert containerimage.content_key(tmp_path) == before  # not in the context
    (tmp_path / "api" / "pkg" / "a.py").write_text("x = 2\n")
    assert containerimage.content_key(tmp_path) != before


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        (
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "x"},
                "spec": {
                    "replicaz": 2,
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "i"}]},
                    },
                },
            },
            "additional properties 'replicaz' not allowed",
        ),
        (
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Flavor",
                "metadata": {"name": "f"},
                "spec": {"vcpus": "two", "memoryMiB": 128, "diskGiB": 1},
            },
            "/spec/vcpus",
        ),
    ],
    ids=["built-in kind", "kubenova kind"],
)
def test_the_schema_check_refuses_a_wrong_manifest(
    tmp_path: pathlib.Path, doc: dict[str, object], complaint: str
) -> None:
    crds = [
        yaml.safe_load(p.read_text()) for p in sorted((chartcheck.CHART / "crds").glob("*.yaml"))
    ]
    chartcheck.crd_schemas(crds, tmp_path / "crd")
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [
            str(paths.binary("kubeconform")),
            "-strict",
            "-schema-location",
            chartcheck.schema_location(chartcheck.kubernetes_schemas()),
            "-schema-location",
            chartcheck.schema_location(tmp_path / "crd"),
            str(manifest),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, out.stdout
    assert complaint in out.stdout
