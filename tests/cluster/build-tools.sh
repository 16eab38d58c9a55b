#!/usr/bin/env bash
# Build the pinned e2e tools (Kubernetes control plane, kubectl, etcd, helm,
# versitygw, toxiproxy, promtool) from the Go module proxy into a cache outside the repo.
#
#   bash tests/cluster/build-tools.sh            # build what is missing
#   TOOLS_BIN=$(bash tests/cluster/build-tools.sh | tail -1)
#
# The cache directory is keyed by the pins, the wrapper go.mod/go.sum files and
# the Go version, so a changed pin builds into a fresh directory. Binaries that
# are already there are skipped; when the cache is current nothing is built.
# Progress goes to stderr; the last line of stdout is the bin directory.
# Pins and deviations are documented in tests/cluster/PINS.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- pins --------------------------------------------------------------------
# Kubernetes and etcd are pinned by the wrapper modules (go.mod, etcd/go.mod);
# these must agree with them (checked below). K8S_VERSION is in golib.sh.
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
VERSITYGW_VERSION=v1.7.0
TOXIPROXY_VERSION=v2.12.0
# promtool tests the chart's alert rules. It joined after the cache key was set: it is kept
# out of KEY (adding it would rebuild everything) and guarded by its own version stamp.
PROMTOOL_VERSION=v0.316.0
# ------------------------------------------------------------------------------

# shellcheck source=tests/cluster/golib.sh
source "$HERE/golib.sh"

log() { echo "build-tools: $*" >&2; }

# Sanity: the wrapper modules must carry the pinned versions.
grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "$HERE/go.mod" \
    || { log "tests/cluster/go.mod does not require k8s.io/kubernetes ${K8S_VERSION}"; exit 1; }
grep -q "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}\$" "$HERE/etcd/go.mod" \
    || { log "tests/cluster/etcd/go.mod does not require etcd server ${ETCD_VERSION}"; exit 1; }

GO_VERSION=$("$GO" env GOVERSION)
GOOS_ARCH="$("$GO" env GOOS)-$("$GO" env GOARCH)"
KEY=$( {
    echo "k8s=$K8S_VERSION staging=$K8S_STAGING_VERSION etcd=$ETCD_VERSION helm=$HELM_VERSION"
    echo "versitygw=$VERSITYGW_VERSION toxiproxy=$TOXIPROXY_VERSION go=$GO_VERSION $GOOS_ARCH"
    echo "flags=$GOFLAGS cgo=$CGO_ENABLED layout=2"
    # Module files without comments and blank lines: only requirements matter.
    sed -e 's#^[[:space:]]*//.*##' -e '/^[[:space:]]*$/d' \
        "$HERE/go.mod" "$HERE/go.sum" "$HERE/etcd/go.mod" "$HERE/etcd/go.sum"
} | sha256sum | cut -c1-12 )
CACHE_ROOT=${TSB_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/timesheet-backup-operator/tools}
DIR="$CACHE_ROOT/${K8S_VERSION}-${KEY}"
BIN="$DIR/bin"
mkdir -p "$BIN"

TOOLS=(etcd kube-apiserver kube-controller-manager kubectl helm versitygw toxiproxy-server toxiproxy-cli
       promtool)

# A promtool of another version is stale: drop it so it is rebuilt below.
if [ "$(cat "$BIN/.promtool-version" 2>/dev/null)" != "$PROMTOOL_VERSION" ]; then
    rm -f "$BIN/promtool"
fi

missing=()
for t in "${TOOLS[@]}"; do
    [ -x "$BIN/$t" ] || missing+=("$t")
done
if [ ${#missing[@]} -eq 0 ]; then
    log "cache current: $BIN"
    echo "$BIN"
    exit 0
fi

# One build at a time per cache dir (two `make` targets may race).
exec 9>"$DIR/.lock"
flock 9

K8S_LDFLAGS=$(k8s_ldflags)
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
done

TMP="$DIR/tmp.$$"
rm -rf "$TMP"; mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

# build NAME VERSION -- command... ; the command must write $TMP/NAME.
build() {
    local name=$1 version=$2; shift 3
    if [ -x "$BIN/$name" ]; then
        log "$name $version: cached"
        return
    fi
    log "building $name $version ..."
    local start=$SECONDS
    "$@" >&2
    mv -f "$TMP/$name" "$BIN/$name"
    log "built $name $version in $((SECONDS - start))s"
}

T0=$SECONDS
build etcd "$ETCD_VERSION" -- \
    bash -c 'cd "$1/etcd" && "$2" build -p "$3" -ldflags "-s -w" -o "$4/etcd" .' _ "$HERE" "$GO" "$PAR" "$TMP"
for m in kube-apiserver kube-controller-manager kubectl; do
    build "$m" "$K8S_VERSION" -- \
        bash -c 'cd "$1" && "$2" build -p "$3" -ldflags "$4" -o "$5/$6" "k8s.io/kubernetes/cmd/$6"' \
        _ "$HERE" "$GO" "$PAR" "$K8S_LDFLAGS" "$TMP" "$m"
done
build helm "$HELM_VERSION" -- \
    env GOBIN="$TMP" "$GO" install -p "$PAR" -ldflags "$HELM_LDFLAGS" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
build versitygw "$VERSITYGW_VERSION" -- \
    env GOBIN="$TMP" "$GO" install -p "$PAR" \
    -ldflags "-s -w -X main.Version=${VERSITYGW_VERSION} -X main.Build=${VERSITYGW_VERSION} -X main.BuildTime=none" \
    "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"
for pair in toxiproxy-server:server toxiproxy-cli:cli; do
    name=${pair%%:*} sub=${pair#*:}
    # go install names the binary after the package directory (server, cli).
    build "$name" "$TOXIPROXY_VERSION" -- \
        bash -c 'env GOBIN="$1" "$2" install -p "$3" -ldflags "$4" "$5" && mv -f "$1/$6" "$1/$7"' _ \
        "$TMP" "$GO" "$PAR" "-s -w -X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION#v}" \
        "github.com/Shopify/toxiproxy/v2/cmd/${sub}@${TOXIPROXY_VERSION}" "$sub" "$name"
done

build promtool "$PROMTOOL_VERSION" -- \
    env GOBIN="$TMP" "$GO" install -p "$PAR" -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@${PROMTOOL_VERSION}"
echo "$PROMTOOL_VERSION" > "$BIN/.promtool-version"

{
    echo "k8s.io/kubernetes $K8S_VERSION (staging $K8S_STAGING_VERSION)"
    echo "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo "helm.sh/helm/v3 $HELM_VERSION"
    echo "github.com/versity/versitygw $VERSITYGW_VERSION"
    echo "github.com/Shopify/toxiproxy/v2 $TOXIPROXY_VERSION"
    echo "github.com/prometheus/prometheus $PROMTOOL_VERSION (promtool)"
    echo "$GO_VERSION $GOOS_ARCH"
} > "$DIR/PINS"
log "all tools ready in $((SECONDS - T0))s"
echo "$BIN"
