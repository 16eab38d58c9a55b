# Shared by build-tools.sh and build-node-tools.sh (sourced): the Kubernetes pin both build
# from, the Go toolchain and flags, and the version stamps of Kubernetes binaries.
# shellcheck shell=bash

# Both wrapper modules (go.mod, node/go.mod) require this version; the scripts check it.
K8S_VERSION=v1.37.2
K8S_STAGING_VERSION=v0.37.2

if command -v go >/dev/null 2>&1; then
    GO=${GO:-go}
elif [ -x /usr/local/go/bin/go ]; then
    GO=${GO:-/usr/local/go/bin/go}
else
    echo "$(basename "$0"): no Go toolchain found (need Go >= 1.26; set GO=/path/to/go)" >&2
    exit 1
fi
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false"
# 2 cores here; let Go use what the machine has, but never more than 4 parallel
# compiles (linking kube-apiserver alone needs ~2 GB).
NCPU=$(nproc 2>/dev/null || echo 2)
PAR=$(( NCPU < 4 ? NCPU : 4 ))

# -ldflags for a k8s.io/kubernetes main: `version` then prints the pin, as a release does.
k8s_ldflags() {
    local minor=${K8S_VERSION#v1.} flags="-s -w" pkg
    minor=${minor%%.*}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}
