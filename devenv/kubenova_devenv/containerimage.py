"""The project's Dockerfile built on this machine, with no Docker engine and no registry.

What users build is what the tests run: ``buildah bud`` (daemonless; vfs storage, chroot
isolation, ``--pull=never``) builds the repository's ``Dockerfile`` itself. Its ``FROM
debian:bookworm-slim`` cannot be pulled here, so a Debian root filesystem made by
``mmdebstrap`` from the Debian mirror is imported and tagged with exactly that name: a
faithful stand-in, since the real base is plain Debian too. The pod sandbox ("pause") image
is the Kubernetes module's ``build/pause/linux/pause.c``, compiled by ``hack/setup.sh``.

Everything built stays in the cache outside the clone (``~/.cache/kubenova/images``): the
image archive is named by a hash of everything it is built from (the Dockerfile, the build
context, the base's recipe), so a second run with unchanged sources builds nothing, and
buildah's layer cache makes a code-only change rebuild only the last layers.

    python -m kubenova_devenv.containerimage     # build (or find) the image; print its archive
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from kubenova_devenv import paths

#: The name the Dockerfile's FROM resolves to (``debian:bookworm-slim``, fully qualified).
BASE_REF = "docker.io/library/debian:bookworm-slim"
#: Where the test bed's image is known to the node's containerd (never pulled: it is imported).
REPOSITORY = "localhost/kubenova"
#: containerd's ``sandbox_image``; the tag is build/pause's TAG in the Kubernetes module.
PAUSE_REF = "registry.k8s.io/pause:3.10.2"
#: What the Dockerfile's build context holds (``.dockerignore`` admits exactly these).
CONTEXT = ("pyproject.toml", "README.md", "api", "operator", "node-agent", "devenv", "cli")
_SKIP = ("__pycache__", ".egg-info", ".mypy_cache")
#: mmdebstrap's recipe for the stand-in base (part of every cache key). The dpkg excludes are
#: the ones Debian's own slim images are made with.
BASE_OPTIONS = (
    "--variant=minbase",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
BASE_SUITE = "bookworm"
BASE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_RECIPE = (*BASE_OPTIONS, BASE_SUITE, *BASE_SOURCES)


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """An image archive that ``ctr -n k8s.io images import`` takes."""

    ref: str
    archive: pathlib.Path
    built_seconds: float
    """How long this call took to build it (0 when the cache had it)."""

    @property
    def size_bytes(self) -> int:
        """The image's size: its layers, uncompressed (the archive is a plain tar of them)."""
        return self.archive.stat().st_size


def images_dir() -> pathlib.Path:
    path = paths.cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Buildah:
    """buildah with a storage of its own under the cache (never the machine's default)."""

    def __init__(self, root: pathlib.Path | None = None) -> None:
        self.root = root or paths.cache_dir() / "buildah"

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, log: pathlib.Path | None = None) -> str:
        env = dict(os.environ, BUILDAH_ISOLATION="chroot")
        if log is None:
            out = subprocess.run(self.argv(*args), capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"buildah {args[0]} failed: {out.stderr.strip()[-2000:]}")
            return out.stdout
        with log.open("a") as f:
            done = subprocess.run(self.argv(*args), stdout=f, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"buildah {args[0]} failed (log {log}):\n{tail}")
        return ""

    def has_image(self, ref: str) -> bool:
        out = subprocess.run(
            self.argv("inspect", "--type", "image", ref), capture_output=True, text=True
        )
        return out.returncode == 0


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time on this machine (test runs may start together)."""
    with (images_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def context_files(repo: pathlib.Path = paths.REPO) -> list[pathlib.Path]:
    """Every file of the build context, sorted (what ``.dockerignore`` lets through)."""
    files: list[pathlib.Path] = []
    for entry in CONTEXT:
        path = repo / entry
        if path.is_file():
            files.append(path)
            continue
        for found in path.rglob("*"):
            rel = found.relative_to(repo).parts
            if found.is_file() and not any(s in p for p in rel for s in _SKIP):
                files.append(found)
    return sorted(files)


def content_key(repo: pathlib.Path = paths.REPO) -> str:
    """A hash of the Dockerfile, the build context and the base's recipe."""
    parts = [
        (repo / "Dockerfile").read_bytes(),
        (repo / ".dockerignore").read_bytes(),
        json.dumps(BASE_RECIPE).encode(),
    ]
    for path in context_files(repo):
        parts += [str(path.relative_to(repo)).encode(), path.read_bytes()]
    return _digest(*parts)[:16]


def base_rootfs() -> pathlib.Path:
    """The stand-in for ``debian:bookworm-slim``: mmdebstrap's tarball, made once."""
    key = _digest(json.dumps(BASE_RECIPE).encode())[:12]
    target = images_dir() / f"debian-bookworm-{key}.tar"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        partial = pathlib.Path(tmp) / target.name
        out = subprocess.run(
            ["mmdebstrap", "--quiet", *BASE_OPTIONS, BASE_SUITE, str(partial), *BASE_SOURCES],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed: {out.stderr.strip()[-2000:]}")
        partial.rename(target)
    return target


def ensure_base(b: Buildah) -> None:
    """The stand-in root filesystem imported into buildah's storage under ``BASE_REF``."""
    if b.has_image(BASE_REF):
        return
    rootfs = base_rootfs()
    ctr = b.run("from", "scratch").strip()
    try:
        b.run("add", ctr, str(rootfs), "/")
        b.run("config", "--cmd", "bash", "--env", "PATH=" + _PATH, ctr)
        b.run("commit", "--quiet", ctr, BASE_REF)
    finally:
        b.run("rm", ctr)


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _push(b: Buildah, ref: str, target: pathlib.Path) -> None:
    """Write ``ref`` as a docker-archive at ``target`` (atomically: a partial file never has
    the final name)."""
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    try:
        b.run("push", "--quiet", ref, f"docker-archive:{partial}:{ref}")
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)


def build(repo: pathlib.Path = paths.REPO, log: pathlib.Path | None = None) -> BuiltImage:
    """The repository's Dockerfile built into an archive (or found in the cache)."""
    key = content_key(repo)
    ref = f"{REPOSITORY}:{key}"
    target = images_dir() / f"kubenova-{key}.tar"
    started = time.monotonic()
    with _locked():
        if target.exists():
            os.utime(target)  # recently used: kept by _prune_archives
            return BuiltImage(ref, target, 0.0)
        b = Buildah()
        ensure_base(b)
        log = log or images_dir() / f"kubenova-{key}.log"
        b.run(
            "bud",
            "--layers",
            "--pull=never",
            "--isolation",
            "chroot",
            "--secret",
            "id=ca,src=/etc/ssl/certs/ca-certificates.crt",
            "-f",
            str(repo / "Dockerfile"),
            "-t",
            ref,
            str(repo),
            log=log,
        )
        _push(b, ref, target)
        b.run("rmi", ref)  # the archive is what is kept
        _prune_layers(b, log.read_text(errors="replace"))
        _prune_archives()
    return BuiltImage(ref, target, time.monotonic() - started)


def _prune_layers(b: Buildah, build_log: str) -> None:
    """Keep buildah's layer cache to the steps of the build just made (whose dependency
    layers the next build reuses) and the named images: with vfs every step is a full copy
    of the file system, so old builds' steps would soon fill the disk."""
    kept = re.findall(r"^--> (?:Using cache )?([0-9a-f]{11,64})$", build_log, re.MULTILINE)
    for image in json.loads(b.run("images", "--all", "--no-trunc", "--json") or "[]"):
        full = str(image["id"]).removeprefix("sha256:")
        if image.get("names") or any(full.startswith(k) for k in kept):
            continue
        with contextlib.suppress(RuntimeError):  # in use by a child step: goes with it later
            b.run("rmi", "--force", full)


#: Image archives kept in the cache: the most recently used ones (other checkouts' included).
KEEP_ARCHIVES = 3


def _prune_archives() -> None:
    archives = sorted(
        images_dir().glob("kubenova-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in archives[KEEP_ARCHIVES:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".log").unlink(missing_ok=True)


def pause_image() -> BuiltImage:
    """The pod sandbox image: the pause program built by ``hack/setup.sh``, alone."""
    program = paths.binary("pause")
    key = _digest(program.read_bytes())[:12]
    target = images_dir() / f"pause-{key}.tar"
    started = time.monotonic()
    with _locked():
        if target.exists():
            return BuiltImage(PAUSE_REF, target, 0.0)
        b = Buildah()
        ctr = b.run("from", "scratch").strip()
        try:
            b.run("copy", "--chmod", "0755", ctr, str(program), "/pause")
            b.run("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
            b.run("commit", "--quiet", ctr, PAUSE_REF)
        finally:
            b.run("rm", ctr)
        _push(b, PAUSE_REF, target)
    return BuiltImage(PAUSE_REF, target, time.monotonic() - started)


def main() -> int:
    image = build()
    how = f"built in {image.built_seconds:.0f}s" if image.built_seconds else "cached"
    print(f"{image.ref} {image.archive} ({image.size_bytes / 2**20:.0f} MiB, {how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
