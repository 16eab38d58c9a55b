#!/usr/bin/env bash
# Debian packages the test tiers and the demo need; a no-op when all are installed.
# postgresql(-contrib): the real server of the integration and e2e tiers, pg_dump/pg_restore
# and the citext extension of the sample schema; zstd, age, tar, gzip: the by-hand restore
# recipes are tested with the standard tools; openssl: the control plane's certificates;
# util-linux: runuser/setpriv/flock for the tests and cluster-up; procps: pgrep; iproute2,
# iptables, ipset, runc: the e2e node (the host alias on lo, kube-proxy's and kube-router's rules,
# containerd's runtime).
# debootstrap and docker.io: `make image` (tests/cluster/build-images.sh) builds the image and
# the test PostgreSQL server images without a registry, on Debian bases made with debootstrap;
# docker.io's client (< 23) builds with BuildKit without the buildx plugin. An engine from
# another package (docker-ce) counts as installed.
set -euo pipefail
packages=(postgresql postgresql-contrib zstd age tar gzip openssl util-linux procps curl iproute2 iptables ipset runc
          debootstrap docker.io)
missing=()
for p in "${packages[@]}"; do
  if [ "$p" = docker.io ] && command -v dockerd >/dev/null; then
    continue
  fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
