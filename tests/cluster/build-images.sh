#!/usr/bin/env bash
# Build the container images without a container registry (`make image`):
#
#   tsb-base:<suite>-<key>          Debian bookworm, trixie and sid, `debootstrap --variant=minbase`
#                                   from the Debian mirror, trimmed, `docker import`ed
#   timesheet-backup-operator:dev   the root Dockerfile on tsb-base:trixie-<key>
#   tsb-test/shell:1                the trixie base again: the e2e tier's shell pods
#   tsb-pgserver:<major>            test-only PostgreSQL servers (tests/cluster/pgserver/):
#                                   15 on bookworm, 17 on trixie, 18 on sid
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/timesheet-backup-operator/images/rootfs-<suite>-<key>.tar.zst.
# <key> is a hash of the rootfs recipe (make_rootfs below, the mirror, the architecture) and the
# month (UTC YYYYMM; TSB_IMAGES_EPOCH overrides it): a new month, or a changed recipe, bootstraps
# afresh so the bases' own packages follow Debian's updates (the packages installed on top come
# from the current archive at every build anyway). Within a key an existing image is reused and a
# deleted one is re-imported from its tarball. The other images carry a hash of their inputs
# (label tsb.inputs: the Dockerfile, what it copies, the base's layers) and are rebuilt only when
# it changed.
#
# Building needs BuildKit (the Dockerfile mounts the host's CA bundle as a build secret, so pip
# can reach PyPI through an intercepting proxy without the bundle entering any layer): `docker
# buildx` when installed, else the classic client's built-in BuildKit (docker < 23, e.g. Debian's
# docker.io 20.10 at /usr/bin/docker). TSB_BUILD_CA names the bundle (default: the system one).
# dockerd is started when it is not running (log: <cache>/images/dockerd.log).
# Progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/timesheet-backup-operator/images"
MIRROR=${TSB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${TSB_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
ARCH=$(dpkg --print-architecture)
EPOCH=${TSB_IMAGES_EPOCH:-$(date -u +%Y%m)}
OPERATOR_IMAGE=${TSB_OPERATOR_IMAGE:-timesheet-backup-operator:dev}
SHELL_IMAGE=tsb-test/shell:1
CA=${TSB_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
# Test servers: major -> suite of its base (the newest Debian release carrying that major).
PG_MAJORS=(15 17 18)
declare -A PG_SUITE=([15]=bookworm [17]=trixie [18]=sid)

log() { echo "build-images: $*" >&2; }
die() { log "$*"; exit 1; }
mkdir -p "$CACHE"

# One run at a time (two make targets may race on the cache and the tags).
exec 9>"$CACHE/.lock"
flock 9

# ---- docker ------------------------------------------------------------------
DOCKER=${DOCKER:-docker}
command -v "$DOCKER" >/dev/null || die "no docker client (bash tests/cluster/install-deps.sh)"
if ! "$DOCKER" info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "docker engine not running and no dockerd to start"
    [ "$(id -u)" = 0 ] || die "docker engine not running (start dockerd as root)"
    log "starting dockerd (log: $CACHE/dockerd.log)"
    # setsid: the daemon outlives this script; it must not hold make's terminal or our lock.
    setsid dockerd >>"$CACHE/dockerd.log" 2>&1 </dev/null 9>&- &
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not come up in 60s; see $CACHE/dockerd.log"
fi

# One way to build with BuildKit: buildx if the client has it, else the pre-23 client's own.
BUILD=()
for client in "$DOCKER" /usr/bin/docker; do
    command -v "$client" >/dev/null || continue
    if "$client" buildx version >/dev/null 2>&1; then
        BUILD=("$client" buildx build --load)
        break
    fi
    v=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || echo 99)
    if [ "${v%%.*}" -lt 23 ] 2>/dev/null; then
        BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
        break
    fi
done
[ ${#BUILD[@]} -gt 0 ] || die "no BuildKit: install docker-buildx (or use a docker client < 23)"

image_label() { # image label -> value (empty if the image or label is missing)
    "$DOCKER" image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# ---- base images -------------------------------------------------------------
# Everything that shapes a rootfs is in this function: its text is part of the cache key.
make_rootfs() { # suite dir
    local suite=$1 dir=$2
    debootstrap --variant=minbase --arch="$ARCH" "$suite" "$dir" "$MIRROR" >&2
    # Sources as in Debian's images: the suite, its updates and security (sid has neither).
    local keyring=/usr/share/keyrings/debian-archive-keyring.pgp suites="$suite"
    [ -e "$dir$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    rm -f "$dir/etc/apt/sources.list"
    if [ "$suite" != sid ]; then
        suites="$suite $suite-updates"
    fi
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
        "$MIRROR" "$suites" "$keyring" >"$dir/etc/apt/sources.list.d/debian.sources"
    if [ "$suite" != sid ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
            "$SECURITY_MIRROR" "$suite" "$keyring" >>"$dir/etc/apt/sources.list.d/debian.sources"
    fi
    # Container conventions of Debian's own images: no docs/man pages/translations from later
    # installs either, no package caches, no services started by maintainer scripts.
    cat >"$dir/etc/dpkg/dpkg.cfg.d/tsb-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat >"$dir/etc/apt/apt.conf.d/tsb-container" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::Retries "3";
APT::AutoRemove::SuggestsImportant "false";
EOF
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    # Trim: what the excludes above would have kept out, caches, logs, host leftovers.
    find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$dir"/usr/share/{man,groff,info,lintian,linda,locale}/* \
        "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/cache/debconf/*-old \
        "$dir"/var/lib/dpkg/*-old "$dir"/var/cache/ldconfig/aux-cache "$dir"/tmp/* \
        "$dir"/var/tmp/* "$dir"/dev/* "$dir"/etc/machine-id
    find "$dir/var/log" -type f -delete
    : >"$dir/etc/resolv.conf"
    : >"$dir/etc/hostname"
}

BASE_KEY=$( { declare -f make_rootfs; echo "$MIRROR $SECURITY_MIRROR $ARCH $EPOCH"; } \
    | sha256sum | cut -c1-12 )

ensure_base() { # suite -> prints the image tag
    local suite=$1 tag="tsb-base:$1-$BASE_KEY" tarball="$CACHE/rootfs-$1-$BASE_KEY.tar.zst"
    if "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then
        log "$tag: present"
        echo "$tag"; return
    fi
    local t0=$SECONDS
    if [ ! -s "$tarball" ]; then
        log "$tag: debootstrap $suite (minbase) ..."
        local dir="$CACHE/rootfs-$suite.tmp"
        rm -rf "$dir" "$tarball.tmp"
        make_rootfs "$suite" "$dir"
        tar -C "$dir" --numeric-owner -c . | zstd -q -T0 -o "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$dir"
        # Rootfs tarballs of older keys are dead weight now.
        find "$CACHE" -maxdepth 1 -name "rootfs-$suite-*.tar.zst" -not -name "${tarball##*/}" -delete
        log "$tag: rootfs $(du -h "$tarball" | cut -f1) compressed, built in $((SECONDS - t0))s"
    fi
    log "$tag: importing $tarball"
    zstd -dc "$tarball" | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL tsb.base=$suite-$BASE_KEY" \
        - "$tag" >/dev/null
    log "$tag: imported in $((SECONDS - t0))s"
    echo "$tag"
}

# ---- images from Dockerfiles -------------------------------------------------
current() { # tag inputs-hash -> 0 if the image exists and was built from these inputs
    if [ "$(image_label "$1" tsb.inputs)" = "$2" ]; then
        log "$1: current (inputs $2)"
        return 0
    fi
    return 1
}

build() { # tag inputs-hash docker-build-args...
    local tag=$1 inputs=$2; shift 2
    log "$tag: building (inputs $inputs) ..."
    local t0=$SECONDS
    "${BUILD[@]}" --label "tsb.inputs=$inputs" -t "$tag" "$@" >&2
    log "$tag: built in $((SECONDS - t0))s"
}

files_hash() { # paths... -> hash of the files' names and contents (caches and bytecode skipped)
    (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# An image's content: its layers' digests (a base re-imported from the same tarball matches).
image_layers() { "$DOCKER" image inspect --format '{{.RootFS.Layers}}' "$1"; }

# sid's Release is valid for a week; a lagging mirror or cache serves it expired and apt refuses
# it. Then the builds are told to skip that check for sid. Sets SID_VALID (yes/no). A Release
# that cannot be read here counts as expired: apt would read the same copy, and a build that
# fails on a stale date helps nobody (signatures are checked either way).
SID_VALID=
check_sid_release() {
    [ -z "$SID_VALID" ] || return 0
    local until
    SID_VALID=yes
    until=$(curl -fsS --retry 3 --retry-delay 2 --max-time 60 "$MIRROR/dists/sid/InRelease" \
        2>/dev/null | sed -n 's/^Valid-Until: //p' | head -n1) || true
    if [ -z "$until" ]; then
        SID_VALID=no
        log "warning: could not read sid's Release from $MIRROR; building with" \
            "Check-Valid-Until: no for sid (signatures are still checked)"
    elif [ "$(date -u -d "$until" +%s)" -le "$(date -u +%s)" ]; then
        SID_VALID=no
        log "warning: $MIRROR serves sid's Release expired since $until; building with" \
            "Check-Valid-Until: no for sid (signatures are still checked)"
    fi
}

T0=$SECONDS
BASE_TRIXIE=$(ensure_base trixie)
# The e2e tier's throwaway pods (sh, sleep, id) run in the plain trixie base.
"$DOCKER" tag "$BASE_TRIXIE" "$SHELL_IMAGE"

# The project's image. The hash covers what the Dockerfile copies, the base and the build args.
inputs=$( { files_hash Dockerfile pyproject.toml constraints.txt README.md operator
            image_layers "$BASE_TRIXIE"; } | sha256sum | cut -c1-16 )
if ! current "$OPERATOR_IMAGE" "$inputs"; then
    check_sid_release
    secret=()
    if [ -r "$CA" ]; then
        secret=(--secret "id=ca,src=$CA")
    else
        log "no CA bundle at $CA: pip uses the image's own"
    fi
    build "$OPERATOR_IMAGE" "$inputs" --build-arg "BASE=$BASE_TRIXIE" \
        --build-arg "SID_CHECK_VALID_UNTIL=$SID_VALID" "${secret[@]}" "$ROOT"
fi

for major in "${PG_MAJORS[@]}"; do
    suite=${PG_SUITE[$major]}
    base=$(ensure_base "$suite")
    inputs=$( { files_hash tests/cluster/pgserver; echo "$major"; image_layers "$base"; } \
        | sha256sum | cut -c1-16 )
    current "tsb-pgserver:$major" "$inputs" && continue
    valid=yes
    if [ "$suite" = sid ]; then
        check_sid_release
        valid=$SID_VALID
    fi
    build "tsb-pgserver:$major" "$inputs" --build-arg "BASE=$base" --build-arg "MAJOR=$major" \
        --build-arg "CHECK_VALID_UNTIL=$valid" "$HERE/pgserver"
done

# Old base tags (previous keys) are untagged; their layers go once no image uses them. Images
# that a rebuild left without a tag are removed.
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' tsb-base | grep -v -- "-$BASE_KEY\$" \
    | xargs -r "$DOCKER" image rm >/dev/null 2>&1 || true
"$DOCKER" image prune --force --filter label=tsb.inputs >/dev/null 2>&1 || true

log "images ready in $((SECONDS - T0))s"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
    | grep -E "^(tsb-base|tsb-pgserver|tsb-test/shell|${OPERATOR_IMAGE%%:*}):" | sort >&2
