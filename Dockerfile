# One image for the operator, the agent Jobs and the chart's hooks: Debian trixie, its Python
# (3.13) and the PostgreSQL client tools of several majors side by side.
# `make image` builds it on a trixie base made locally with debootstrap (no registry needed);
# with a registry the default base is Debian's own trixie-slim.
ARG BASE=debian:trixie-slim

FROM ${BASE} AS build
# No debconf prompts (an ARG: not kept in the image's environment).
ARG DEBIAN_FRONTEND=noninteractive
# Debian serves only the current version of each package, so `pkg=version` pins would break the
# build at the next point release; the suite fixes the versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
# The optional build secret `ca` is a CA bundle for reaching PyPI through an intercepting proxy
# (`--secret id=ca,src=...`); a secret mount never becomes part of a layer.
# A fresh venv's pip cannot parse some current packages' metadata: upgrade it first.
# pip compiles the bytecode at install time: the read-only root filesystem gets no .pyc later.
# pip's download cache is a BuildKit cache mount: kept between builds, never in a layer.
# pip itself is not needed at run time (14 MB): removed.
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade 'pip>=24' \
 && /opt/venv/bin/pip install -c constraints.txt . \
 && /opt/venv/bin/pip uninstall --yes --quiet pip \
 && /opt/venv/bin/timesheet-backup --help >/dev/null

FROM ${BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Some mirrors and caches serve sid's Release (valid for a week) after it expired; the build
# script passes `no` only when it finds the mirror's copy expired. Packages stay signature-checked.
ARG SID_CHECK_VALID_UNTIL=yes
# pg_dump/pg_restore must fit the server: pg_dump N refuses servers newer than N, and 17+ write
# `SET transaction_timeout`, which servers before 17 reject. So the image carries the clients of
# several majors in /usr/lib/postgresql/<major>/bin and the agent picks the one for the server.
# The supported servers are 15 to 18 (agent/clients.py, docs/security.md). 17 is trixie's; 15
# comes from bookworm, 18 from sid. Those suites are pinned to priority 100: only what is named
# here (and what trixie cannot satisfy: libpq5 18 with its krb5/ldap/sasl libraries) comes from
# them; libc6 and the rest stay trixie's. Their sources are removed again, so derived images
# see plain trixie. 13 and 14 are past their end of life and not shipped.
# zstd and age: the same tools docs/manual-restore.md uses, so the image can restore by hand
# (`kubectl run ... -- sh`); the agent itself streams with the Python bindings. tzdata: the
# schedules' time zones (zoneinfo); trixie's slim images no longer include it.
# hadolint ignore=DL3008
RUN keyring=/usr/share/keyrings/debian-archive-keyring.pgp \
 && { printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n'; \
      printf 'Components: main\nSigned-By: %s\n\n' "$keyring"; \
      printf 'Types: deb\nURIs: http://deb.debian.org/debian-security\n'; \
      printf 'Suites: bookworm-security\nComponents: main\nSigned-By: %s\n\n' "$keyring"; \
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\n'; \
      printf 'Signed-By: %s\nCheck-Valid-Until: %s\n' "$keyring" "$SID_CHECK_VALID_UNTIL"; \
    } >/etc/apt/sources.list.d/tsb-clients.sources \
 && for suite in bookworm bookworm-security sid; do \
      printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n\n' "$suite"; \
    done >/etc/apt/preferences.d/tsb-clients \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 zstd age ca-certificates tzdata \
      postgresql-client-17 postgresql-client-15 \
      postgresql-client-18/sid libpq5/sid \
 && for major in 15 17 18; do test -x "/usr/lib/postgresql/$major/bin/pg_dump"; done \
 && for bin in /usr/lib/postgresql/*/bin; do \
      for tool in pg_dump pg_restore psql pg_dumpall; do "$bin/$tool" --version; done; \
      missing=$(ldd "$bin"/* | grep 'not found' || true); \
      if [ -n "$missing" ]; then echo "$bin: $missing" >&2; exit 1; fi; \
    done \
 && rm -f /etc/apt/sources.list.d/tsb-clients.sources /etc/apt/preferences.d/tsb-clients \
 && rm -rf /var/lib/apt/lists/*
# A passwd entry for the non-root uid: libpq and others look the current user up. Its group is
# 65532 too, like `USER` below and the chart's runAsGroup.
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /scratch \
    --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
# Read-only root filesystem: no bytecode writes; scratch space is the /scratch emptyDir the
# operator and the chart give every pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/scratch \
    TMPDIR=/scratch
# Kubernetes and our commands stop with SIGTERM; stated so that no base can change it.
STOPSIGNAL SIGTERM
USER 65532:65532
ENTRYPOINT ["timesheet-backup"]
CMD ["--help"]
