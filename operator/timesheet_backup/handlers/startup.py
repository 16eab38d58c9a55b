"""Operator start-up: kopf settings, configuration, API client."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup import settings as operator_settings
from timesheet_backup.actions.common import set_config


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Own finalizer and annotation prefix (not kopf's defaults), Events only for what we post
    ourselves and for kopf's warnings, and watch timeouts so a silently dropped connection is
    noticed (without them a watch can hang forever)."""
    set_config(operator_settings.load())
    kube.configure()
    settings.persistence.finalizer = c.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = c.MANAGED_BY
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = 8
    # Bounded per-object concurrency: unbounded, an operator starting next to 5,000 Backups
    # processed them all at once and peaked at 751 MiB; with 100 workers, each leaving as soon
    # as its object is quiet (0.5 s, not kopf's 5 s, so a slot frees quickly), 425 MiB and
    # 23 % slower pruning (docs/benchmarks.md, "Bounded concurrency").
    settings.queueing.worker_limit = 100
    settings.queueing.idle_timeout = 0.5
