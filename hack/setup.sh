#!/usr/bin/env bash
# Idempotent set-up of everything kubenova's quickstart, tests and benchmarks need on a
# Debian bookworm machine: libvirt + QEMU and the tools the test bed uses (Debian packages),
# the Python package and its dependencies, and pinned etcd, kube-apiserver and kubectl built
# from the Go module proxy into a cache that survives between runs and clones.
# A second run finds everything in place and does nothing.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
K8S_VERSION="1.37.2"
ETCD_VERSION="3.7.3"
CACHE="${KUBENOVA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubenova}"
BIN="$CACHE/bin"
PYTHON="${PYTHON:-python3}"
say() { printf 'setup: %s\n' "$*"; }

# --- Debian packages -----------------------------------------------------------------------
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
          qemu-system-x86 qemu-utils busybox-static cpio iproute2 openssl gcc)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The guest kernel is fetched with `apt-get download`, which needs package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    say "refreshing package lists"
    apt-get update -qq
fi

# libvirtd's QEMU driver refuses to start without these accounts (libvirt-daemon-system would
# create them; that package also wants systemd, which these machines do not run).
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent group libvirt >/dev/null || groupadd -r libvirt
id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt \
    -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt

# --- Python ----------------------------------------------------------------------------------
stamp="$CACHE/python-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)-$(echo "$REPO" | sha256sum | cut -c1-8)"
installed_from() { # the folder the installed kubenova_api comes from (empty if none)
    "$PYTHON" -c "import kubenova_agent, kubenova_operator, libvirt, kopf, kubenova_api, pathlib
print(pathlib.Path(kubenova_api.__file__).resolve().parents[2])" 2>/dev/null || true
}
if [[ ! -e "$stamp" || "$(installed_from)" != "$REPO" ]]; then
    say "installing the kubenova Python package and its dependencies"
    "$PYTHON" -m pip install -q --disable-pip-version-check -e "$REPO[dev]" 2>&1 \
        | grep -v "Running pip as the 'root' user" || true
    [[ "$(installed_from)" == "$REPO" ]] || { echo "setup: kubenova is not importable from $REPO" >&2; exit 1; }
    mkdir -p "$CACHE" && touch "$stamp"
fi

# --- Control-plane binaries ------------------------------------------------------------------
mkdir -p "$BIN"
build() { # name version module-dir package
    local name="$1" version="$2" dir="$3" pkg="$4"
    if [[ -x "$BIN/$name" && "$(cat "$BIN/.$name.version" 2>/dev/null)" == "$version" ]]; then
        return
    fi
    say "building $name $version (minutes the first time, seconds with a warm Go cache)"
    (cd "$REPO/hack/tools/$dir" && go build -trimpath -o "$BIN/$name.tmp" "$pkg")
    mv "$BIN/$name.tmp" "$BIN/$name"
    echo "$version" > "$BIN/.$name.version"
}
build etcd "$ETCD_VERSION" etcd .
build kube-apiserver "$K8S_VERSION" kube k8s.io/kubernetes/cmd/kube-apiserver
build kubectl "$K8S_VERSION" kube k8s.io/kubernetes/cmd/kubectl

# --- Guest image -----------------------------------------------------------------------------
"$PYTHON" -m kubenova_devenv.guestimage >/dev/null
say "ready (cache: $CACHE)"
