"""What kstatus — ``sigs.k8s.io/cli-utils/pkg/kstatus``, the library Flux and Argo CD judge a
resource's health with — says about objects, from the library itself: ``hack/setup.sh`` builds
``hack/tools/kstatus`` into the binary cache, and this runs it on the objects as the API server
returned them."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

from kubenova_devenv import paths

CURRENT, IN_PROGRESS, FAILED = "Current", "InProgress", "Failed"


def binary() -> pathlib.Path:
    built = paths.bin_dir() / "kstatus"
    if not built.exists():
        raise FileNotFoundError(f"{built} is missing: run `bash hack/setup.sh test`")
    return built


def compute(obj: dict[str, Any]) -> dict[str, Any]:
    """kstatus's result for one object: ``status`` (Current, InProgress, Failed, Terminating),
    ``message`` and the conditions it derived."""
    out = subprocess.run(
        [str(binary())], input=json.dumps(obj), capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise RuntimeError(f"kstatus failed: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[0])
    return result


def status(obj: dict[str, Any] | None) -> str:
    """Only the status word; "NotFound" for no object."""
    return "NotFound" if obj is None else str(compute(obj)["status"])
