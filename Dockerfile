# syntax=docker/dockerfile:1
# One image for the operator and the agent Jobs. The base is the official PostgreSQL image so
# pg_dump/pg_restore/psql are the newest major (17): pg_dump reads servers from 9.2 up to its
# own major, so every supported server version is covered. Python is Debian's (3.11).
ARG BASE=postgres:17.6-bookworm

FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
# A fresh venv's pip cannot parse some current packages' metadata: upgrade it first.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade 'pip>=24' \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
 && /opt/venv/bin/timesheet-backup --help >/dev/null

FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 zstd ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A passwd entry for the non-root uid: libpq and others look the current user up.
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /scratch --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
# Read-only root filesystem: no bytecode writes; scratch space is the /scratch emptyDir the
# operator gives every pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/scratch \
    TMPDIR=/scratch
USER 65532:65532
ENTRYPOINT ["timesheet-backup"]
CMD ["--help"]
