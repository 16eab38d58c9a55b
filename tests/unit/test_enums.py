"""Each enumeration that reaches the agent has one list of values (api/enums.py).

The expected values are read from the generated CRD schema of the model field, not from
api/enums.py, so a list written again in the agent's parser, or a model field given another
type, fails here. The agent's defaults are held to the models' defaults the same way: a
Backup that leaves a field unset and an agent run by hand without the flag do the same."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, get_args

import pytest

from timesheet_backup import constants
from timesheet_backup.agent import streams
from timesheet_backup.api import models
from timesheet_backup.api.enums import COMPRESSIONS, DUMP_FORMATS
from timesheet_backup.api.fields import json_name, schema_for
from timesheet_backup.cli import build_parser
from timesheet_backup.storage import layout

pytestmark = pytest.mark.unit


def api_enum(model: type[Any], field: str) -> list[str]:
    """The values the CRD schema allows for `model.field` (its JSON name)."""
    values: list[str] = schema_for(model)["properties"][field]["enum"]
    return values


def model_default(model: type[Any], field: str) -> Any:
    (f,) = [f for f in dataclasses.fields(model) if json_name(f) == field]
    return f.default


def agent_option(command: tuple[str, ...], flag: str) -> argparse.Action:
    parser = build_parser()
    for name in command:
        (subparsers,) = [a for a in parser._actions
                         if isinstance(a, argparse._SubParsersAction)]
        parser = subparsers.choices[name]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action


BACKUP, RESTORE, IMPORT = ("agent", "backup"), ("agent", "restore"), ("catalog", "import")

# (agent command, flag, model, field, prefix of values only the agent has)
CHOICES = [
    (BACKUP, "--compression", models.CompressionSpec, "algorithm", ()),
    (BACKUP, "--db-format", models.DatabaseSpec, "format", ()),
    (BACKUP, "--db-sslmode", models.DatabaseSpec, "sslMode", ()),
    (BACKUP, "--sse", models.ServerSideEncryption, "type", ()),
    (RESTORE, "--db-sslmode", models.RestoreDatabaseTarget, "sslMode", ()),
    (RESTORE, "--uploads-mode", models.RestoreUploadsTarget, "mode", ()),
    # Importing hand-made files: `auto` detects the format or compression from the file.
    (IMPORT, "--database-format", models.DatabaseSpec, "format", ("auto",)),
    (IMPORT, "--database-compression", models.CompressionSpec, "algorithm", ("auto",)),
    (IMPORT, "--uploads-compression", models.CompressionSpec, "algorithm", ("auto",)),
]


@pytest.mark.parametrize(("command", "flag", "model", "field", "extra"), CHOICES,
                         ids=[f"{' '.join(c[0])} {c[1]}" for c in CHOICES])
def test_agent_choices_are_the_api_enum(command: tuple[str, ...], flag: str, model: type[Any],
                                        field: str, extra: tuple[str, ...]) -> None:
    assert list(agent_option(command, flag).choices or ()) == [*extra, *api_enum(model, field)]


@pytest.mark.parametrize(("command", "flag", "model", "field"), [
    (BACKUP, "--compression", models.CompressionSpec, "algorithm"),
    (BACKUP, "--db-format", models.DatabaseSpec, "format"),
    (RESTORE, "--uploads-mode", models.RestoreUploadsTarget, "mode"),
])
def test_agent_defaults_are_the_api_defaults(command: tuple[str, ...], flag: str,
                                             model: type[Any], field: str) -> None:
    assert agent_option(command, flag).default == model_default(model, field)


def test_every_value_has_its_key_extension_and_level_range() -> None:
    """Tables keyed by an enum's values cover exactly its values."""
    assert tuple(layout.COMPRESSION_EXTENSIONS) == COMPRESSIONS
    assert tuple(layout.DATABASE_FORMAT_EXTENSIONS) == DUMP_FORMATS
    assert (*streams.LEVELS, "none") == COMPRESSIONS


def test_components_are_the_api_components() -> None:
    assert get_args(models.Component) == constants.COMPONENTS
    assert agent_option(BACKUP, "--component").choices == constants.COMPONENTS
