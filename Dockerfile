# syntax=docker/dockerfile:1
# The one image of every kubenova program: `kubenova-controller` (the default entrypoint; the
# chart's Deployment), `kubenova-agent` (the chart's DaemonSet) and the `kubenova` CLI.
#
# Plain Debian with a virtual environment inside, rather than python:*-slim: the test bed
# builds this very file with no Docker engine and no registry (buildah, with a Debian root
# filesystem made by mmdebstrap standing in for `debian:bookworm-slim`), and a Debian root
# filesystem is a faithful stand-in only for a Debian base. Debian's python3 refuses `pip
# install` outside a venv (PEP 668), hence /opt/kubenova.
#
# The image runs as an unprivileged user (uid 10001). The agent cannot: it talks to the
# host's libvirtd through its root-owned socket and writes guests' disks and images under the
# host's /var/lib/kubenova, so the chart runs the agent's pods as root.
#
# Debian packages are not pinned (hadolint DL3008): a stable release replaces a package's
# version with its security update, and a pin to the old one would stop the build.
#
# Behind a proxy that re-signs TLS, hand pip the proxy's CA bundle as the secret `ca`
# (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`); without it Debian's bundle is used.

FROM debian:bookworm-slim AS build
# libvirt-python is a source package: it compiles against libvirt-dev. Few steps: the test
# bed's builder keeps a full copy of the file system per step (vfs).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates gcc libvirt-dev pkg-config python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/kubenova
# Dependencies first, from pyproject.toml alone: a change of kubenova's code reuses this layer.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/kubenova/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' > /src/requirements.txt \
 && /opt/kubenova/bin/pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt
# The rest of the context (.dockerignore admits only the packages, README.md and
# pyproject.toml), in one layer.
COPY . /src/
RUN --mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/kubenova/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /src \
 && /opt/kubenova/bin/python -c 'import kubenova_operator.main, kubenova_agent.main, libvirt'

FROM debian:bookworm-slim
# libvirt0: the client library libvirt-python links against. The rest are the host programs
# the agent runs (kubenova_agent.hosttools.REQUIRED; a unit test keeps the two together, and
# the agent refuses to start without them): qemu-utils (qemu-img inspects images and makes
# disks), util-linux (prlimit, nsenter), iproute2, nftables, procps (sysctl), dnsmasq-base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libvirt0 python3 \
      qemu-utils util-linux iproute2 nftables procps dnsmasq-base \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kubenova
ENV PATH=/opt/kubenova/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["kubenova-controller"]
# Last, so that a change of kubenova's code rebuilds only this layer of the final stage.
COPY --from=build /opt/kubenova /opt/kubenova
