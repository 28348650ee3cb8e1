#!/usr/bin/env bash
# Idempotent set-up of everything kubenova's quickstart, tests and benchmarks need on a
# Debian bookworm machine. A second run finds everything in place and does nothing.
#
#   hack/setup.sh [up|test]     (default: test)
#
# * Debian packages: libvirt + QEMU and the tools the test bed uses.
# * Python: a virtual environment of the project's own ($KUBENOVA_VENV, default .venv in the
#   checkout), made from pyproject.toml alone: the machine's site-packages are never used, so
#   a package installed there by hand cannot make anything pass. It is re-made whenever
#   pyproject.toml changes. pip's own cache (~/.cache/pip) keeps built wheels between runs.
# * Go: pinned etcd and Kubernetes binaries built from the Go module proxy into a cache outside
#   the checkout ($KUBENOVA_CACHE, default ~/.cache/kubenova), one `go build` per tools module.
#   `up` builds what the quickstart runs (etcd, kube-apiserver, kubectl); `test` everything,
#   kstatus included (hack/tools/kstatus: what GitOps tools say of an object, for the tests).
# * `test` only: the real node of the end-to-end test bed (kubelet, kube-controller-manager,
#   kube-scheduler, kube-proxy, containerd + runc, CNI plugins, the pause program), the
#   daemonless image builder (buildah, mmdebstrap), and helm + kubeconform for `make lint`.
set -euo pipefail

PROFILE="${1:-test}"
case "$PROFILE" in up|test) ;; *) echo "usage: $0 [up|test]" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
K8S_VERSION="1.37.2"
ETCD_VERSION="3.7.3"
HELM_VERSION="3.22.0"
KUBECONFORM_VERSION="0.8.0"
CLI_UTILS_VERSION="0.37.2"  # sigs.k8s.io/cli-utils: kstatus, what Flux and Argo CD judge health with
PAUSE_VERSION="3.10.2"   # build/pause's TAG in the Kubernetes module
CACHE="${KUBENOVA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubenova}"
BIN="$CACHE/bin"
VENV="${KUBENOVA_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
say() { printf 'setup: %s\n' "$*"; }
elapsed() { printf '%ss' "$((SECONDS - $1))"; }

# --- Debian packages -----------------------------------------------------------------------
# syslinux .. ovmf: the test guest as BIOS- and UEFI-bootable disk images (built as plain files,
# no mounts or loop devices) and the UEFI firmware (OVMF) the host offers guests.
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
          qemu-system-x86 qemu-utils busybox-static cpio iproute2 openssl gcc
          dnsmasq-base nftables
          syslinux syslinux-common mtools dosfstools fdisk grub-efi-amd64-bin ovmf)
if [[ "$PROFILE" == test ]]; then
    # The real node (containerd + runc, the CNI bridge, iptables for kube-proxy) and the
    # Dockerfile built with no Docker engine: buildah, and mmdebstrap for the FROM's stand-in.
    PACKAGES+=(containerd runc containernetworking-plugins iptables buildah mmdebstrap)
fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    t=$SECONDS
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "Debian packages installed in $(elapsed $t)"
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

# --- Python: the project's own virtual environment -------------------------------------------
# The stamp names what the venv was made from: this checkout and this pyproject.toml.
want="$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16) $REPO"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.kubenova-stamp" 2>/dev/null)" != "$want" ]]; then
    t=$SECONDS
    say "making the virtual environment $VENV from pyproject.toml"
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[dev]" 2>&1 \
        | grep -v "Running pip as the 'root' user" || true
    got="$("$VENV/bin/python" -c 'import kubenova_api, pathlib
print(pathlib.Path(kubenova_api.__file__).resolve().parents[2])' 2>/dev/null || true)"
    [[ "$got" == "$REPO" ]] || { echo "setup: kubenova is not importable from $REPO in $VENV" >&2; exit 1; }
    echo "$want" > "$VENV/.kubenova-stamp"
    say "virtual environment ready in $(elapsed $t)"
fi

# --- Go-built binaries -----------------------------------------------------------------------
mkdir -p "$BIN"
# The cache is shared by every checkout on the machine: set-ups running at once (several
# clones, worktrees, CI) take turns here, and the later ones find the binaries built.
exec 9>"$BIN/.setup.lock"
if ! flock -n 9; then
    say "waiting for another set-up that is building into $CACHE"
    flock 9
fi
# Version stamps: without them the binaries report v0.0.0-master, which breaks `kubectl
# version` and Helm's kubeVersion check.
k8s_ldflags() {
    local minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"
    local x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
    done
    echo "-s -w$x"
}
# build MODULE-DIR VERSION LDFLAGS NAME=PACKAGE...: builds the missing or outdated ones in one
# `go build` (packages they share are compiled once), each stamped with the version.
build() {
    local dir="$1" version="$2" ldflags="$3"; shift 3
    local names=() pkgs=() spec
    for spec in "$@"; do
        local name="${spec%%=*}" pkg="${spec#*=}"
        if [[ -x "$BIN/$name" && "$(cat "$BIN/.$name.version" 2>/dev/null)" == "$version" ]]; then
            continue
        fi
        names+=("$name"); pkgs+=("$pkg")
    done
    ((${#pkgs[@]})) || return 0
    local t=$SECONDS out="$BIN/.build-$$"
    say "building ${names[*]} $version (minutes the first time, seconds with a warm Go cache)"
    rm -rf "$out" && mkdir -p "$out"
    (cd "$REPO/hack/tools/$dir" && go build -trimpath -ldflags="$ldflags" -o "$out/" "${pkgs[@]}")
    for i in "${!names[@]}"; do
        local built="$out/$(basename "${pkgs[$i]}")"
        [[ "${pkgs[$i]}" == "." ]] && built="$out/$dir"
        mv "$built" "$BIN/${names[$i]}"
        echo "$version" > "$BIN/.${names[$i]}.version"
    done
    rm -rf "$out"
    say "built ${names[*]} in $(elapsed $t)"
}
# The "-rN" suffix names the build recipe: changing flags rebuilds binaries cached before.
build etcd "$ETCD_VERSION-r2" "-s -w" etcd=.
kube=(kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kubectl=k8s.io/kubernetes/cmd/kubectl)
if [[ "$PROFILE" == test ]]; then
    kube+=(kubelet=k8s.io/kubernetes/cmd/kubelet
           kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager
           kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler
           kube-proxy=k8s.io/kubernetes/cmd/kube-proxy)
fi
build kube "$K8S_VERSION-r2" "$(k8s_ldflags)" "${kube[@]}"
if [[ "$PROFILE" == test ]]; then
    # helm: the same stamps as Helm's own Makefile (its kubeVersion default follows client-go).
    helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
    helm_ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= "
    helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
    done
    build helm "$HELM_VERSION-r1" "$helm_ldflags" helm=helm.sh/helm/v3/cmd/helm
    build kubeconform "$KUBECONFORM_VERSION-r1" "-s -w -X main.version=v$KUBECONFORM_VERSION" \
        kubeconform=github.com/yannh/kubeconform/cmd/kubeconform
    # kstatus: an object on stdin -> what sigs.k8s.io/cli-utils/pkg/kstatus computes of it.
    build kstatus "$CLI_UTILS_VERSION-r1" "-s -w" kstatus=.
    # The pod sandbox ("pause") image's program, from the Kubernetes module's own source, as
    # its build/pause Makefile compiles it: no image can be pulled here.
    if [[ "$(cat "$BIN/.pause.version" 2>/dev/null)" != "$PAUSE_VERSION-r1" ]]; then
        src="$(cd "$REPO/hack/tools/kube" && go mod download -json k8s.io/kubernetes \
            | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
        gcc -Os -Wall -Werror -static "-DVERSION=v$PAUSE_VERSION" \
            -o "$BIN/pause" "$src/build/pause/linux/pause.c"
        echo "$PAUSE_VERSION-r1" > "$BIN/.pause.version"
        say "built pause $PAUSE_VERSION"
    fi
fi

# --- Guest image -----------------------------------------------------------------------------
"$VENV/bin/python" -m kubenova_devenv.guestimage >/dev/null
flock -u 9
say "ready for '$PROFILE' (venv: $VENV, cache: $CACHE)"
