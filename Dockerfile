# syntax=docker/dockerfile:1
# One image for the operator, the agent Jobs and the chart's hooks. The base is the official
# PostgreSQL image so pg_dump/pg_restore/psql are the newest major (17): pg_dump dumps servers
# from 9.2 up to its own major, and pg_restore/psql restore into servers of every supported
# major (docs/security.md, "Image"). Python is Debian bookworm's (3.11).
# The tag is pinned exactly; pinning a digest would tie the build to one architecture.
ARG BASE=postgres:17.6-bookworm

FROM ${BASE} AS build
# Debian stable serves only the current version of each package, so `pkg=version` pins would
# break the build at the next point release; the pinned base tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
# A fresh venv's pip cannot parse some current packages' metadata: upgrade it first.
# pip compiles the bytecode at install time: the read-only root filesystem gets no .pyc later.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade 'pip>=24' \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
 && /opt/venv/bin/timesheet-backup --help >/dev/null

FROM ${BASE}
# zstd and age: the same tools docs/manual-restore.md uses, so the image can restore by hand
# (`kubectl run ... -- sh`); the agent itself streams with the Python bindings.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 zstd age ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A passwd entry for the non-root uid: libpq and others look the current user up.
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /scratch \
    --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
# Read-only root filesystem: no bytecode writes; scratch space is the /scratch emptyDir the
# operator and the chart give every pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/scratch \
    TMPDIR=/scratch
# The base image stops PostgreSQL with SIGINT; Kubernetes and our commands expect SIGTERM.
STOPSIGNAL SIGTERM
USER 65532:65532
ENTRYPOINT ["timesheet-backup"]
CMD ["--help"]
