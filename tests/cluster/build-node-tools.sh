#!/usr/bin/env bash
# Build the pinned parts of the e2e node (kubelet, kube-scheduler, kube-proxy, containerd and
# its runc shim, the CNI plugins, crictl, CoreDNS, kube-router's NetworkPolicy controller, the
# pause program) from the Go module proxy
# into a cache outside the repo, next to build-tools.sh's control plane.
#
#   NODE_BIN=$(bash tests/cluster/build-node-tools.sh | tail -1)
#
# Its own cache key (pins, tests/cluster/node/go.mod and go.sum, the Go version), so the node
# joined without rebuilding the control plane. runc is Debian's (apt-get install runc).
# Progress goes to stderr; the last line of stdout is the bin directory. Pins: PINS.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- pins --------------------------------------------------------------------
CONTAINERD_VERSION=v2.4.2
CNI_PLUGINS_VERSION=v1.10.0
CRICTL_VERSION=v1.37.0
COREDNS_VERSION=v1.15.0
# Added after the rest: versioned by a stamp beside the binary instead of the cache key, so
# adding it did not rebuild the kubelet (docs/test-cluster.md, "NetworkPolicy").
KUBE_ROUTER_VERSION=v2.1.0
# ------------------------------------------------------------------------------

# K8S_VERSION (checked against node/go.mod below), the Go toolchain and flags:
# shellcheck source=tests/cluster/golib.sh
source "$HERE/golib.sh"
log() { echo "build-node-tools: $*" >&2; }

grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "$HERE/node/go.mod" \
    || { log "tests/cluster/node/go.mod does not require k8s.io/kubernetes ${K8S_VERSION}"; exit 1; }

KEY=$( {
    echo "k8s=$K8S_VERSION containerd=$CONTAINERD_VERSION cni=$CNI_PLUGINS_VERSION"
    echo "crictl=$CRICTL_VERSION coredns=$COREDNS_VERSION go=$("$GO" env GOVERSION)"
    echo "$("$GO" env GOOS)-$("$GO" env GOARCH) flags=$GOFLAGS cgo=$CGO_ENABLED"
    sed -e 's#^[[:space:]]*//.*##' -e '/^[[:space:]]*$/d' "$HERE/node/go.mod" "$HERE/node/go.sum"
    cat "$HERE/node/pause/main.go"
} | sha256sum | cut -c1-12 )
CACHE_ROOT=${TSB_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/timesheet-backup-operator/tools}
DIR="$CACHE_ROOT/node-${K8S_VERSION}-${KEY}"
BIN="$DIR/bin"
mkdir -p "$BIN/cni"

TOOLS=(kubelet kube-scheduler kube-proxy containerd containerd-shim-runc-v2 ctr crictl coredns pause
       cni/bridge cni/host-local cni/loopback cni/portmap cni/firewall)
[ "$(cat "$BIN/kube-router.version" 2>/dev/null)" = "$KUBE_ROUTER_VERSION" ] || rm -f "$BIN/kube-router"
missing=()
for t in "${TOOLS[@]}" kube-router; do [ -x "$BIN/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then
    log "cache current: $BIN"
    echo "$BIN"
    exit 0
fi

exec 9>"$DIR/.lock"
flock 9

K8S_LDFLAGS=$(k8s_ldflags)
CTRD_LDFLAGS="-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
CTRD_LDFLAGS+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"

TMP="$DIR/tmp.$$"
rm -rf "$TMP"; mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

# build NAME VERSION -- command... ; the command must leave $TMP/NAME (or, for a group, the
# names given after the first with +: build a+b+c ...).
build() {
    local names=$1 version=$2 n all=1; shift 3
    for n in ${names//+/ }; do [ -x "$BIN/$n" ] || all=0; done
    if [ $all = 1 ]; then log "$names $version: cached"; return; fi
    log "building $names $version ..."
    local start=$SECONDS
    "$@" >&2
    for n in ${names//+/ }; do mv -f "$TMP/$(basename "$n")" "$BIN/$n"; done
    log "built $names $version in $((SECONDS - start))s"
}
install_to_tmp() { env GOBIN="$TMP" "$GO" install -p "$PAR" "$@"; }

T0=$SECONDS
for m in kubelet kube-scheduler kube-proxy; do
    build "$m" "$K8S_VERSION" -- \
        bash -c 'cd "$1/node" && "$2" build -p "$3" -ldflags "$4" -o "$5/$6" "k8s.io/kubernetes/cmd/$6"' \
        _ "$HERE" "$GO" "$PAR" "$K8S_LDFLAGS" "$TMP" "$m"
done
build pause "$K8S_VERSION" -- \
    bash -c 'cd "$1/node" && "$2" build -ldflags "-s -w" -o "$3/pause" ./pause' _ "$HERE" "$GO" "$TMP"
# urfave_cli_no_docs drops a man-page generator; no_grpc keeps the shim on ttrpc only.
build containerd+ctr "$CONTAINERD_VERSION" -- install_to_tmp -tags urfave_cli_no_docs \
    -ldflags "$CTRD_LDFLAGS" "github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
    "github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
build containerd-shim-runc-v2 "$CONTAINERD_VERSION" -- install_to_tmp -tags "urfave_cli_no_docs no_grpc" \
    -ldflags "$CTRD_LDFLAGS" "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}"
P=github.com/containernetworking/plugins/plugins
build cni/bridge+cni/host-local+cni/loopback+cni/portmap+cni/firewall "$CNI_PLUGINS_VERSION" -- \
    install_to_tmp -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}" \
    "$P/main/bridge@$CNI_PLUGINS_VERSION" "$P/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "$P/main/loopback@$CNI_PLUGINS_VERSION" "$P/meta/portmap@$CNI_PLUGINS_VERSION" \
    "$P/meta/firewall@$CNI_PLUGINS_VERSION"
build crictl "$CRICTL_VERSION" -- install_to_tmp \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}" \
    "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}"
build coredns "$COREDNS_VERSION" -- install_to_tmp -ldflags "-s -w" \
    "github.com/coredns/coredns@${COREDNS_VERSION}"
# Only its NetworkPolicy controller runs (iptables + ipset): the bridge CNI enforces nothing.
build kube-router "$KUBE_ROUTER_VERSION" -- install_to_tmp \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=${KUBE_ROUTER_VERSION}" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@${KUBE_ROUTER_VERSION}"
echo "$KUBE_ROUTER_VERSION" >"$BIN/kube-router.version"

{
    echo "k8s.io/kubernetes $K8S_VERSION (kubelet, kube-scheduler, kube-proxy)"
    echo "github.com/containerd/containerd/v2 $CONTAINERD_VERSION"
    echo "github.com/containernetworking/plugins $CNI_PLUGINS_VERSION"
    echo "sigs.k8s.io/cri-tools $CRICTL_VERSION"
    echo "github.com/coredns/coredns $COREDNS_VERSION"
    echo "github.com/cloudnativelabs/kube-router/v2 $KUBE_ROUTER_VERSION"
    echo "$("$GO" env GOVERSION)"
} >"$DIR/PINS"
log "node tools ready in $((SECONDS - T0))s"
echo "$BIN"
