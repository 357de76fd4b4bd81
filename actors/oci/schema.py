"""The OCI runtime JSON schemas shipped with zentry, and a validator bound to them.

NOTICE: the schema files (``zentry.actors`` package data, ``actors/schema/*.json``)
are copied unchanged from the Open Container Initiative Runtime Specification,
Copyright 2015 The Linux Foundation, licensed under the Apache License 2.0
(see ``actors/schema/NOTICE``). This module only loads them.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from .validate import SchemaError, Validator

#: the ``zentry.actors`` package data folder (a plain directory: zentry is
#: never imported from a zip; importlib.resources would cost ~25 ms of
#: imports on every CLI call that validates a config)
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema")

#: document names inside the schema folder
CONFIG_SCHEMA = "config-schema.json"
FEATURES_SCHEMA = "features-schema.json"
STATE_SCHEMA = "state-schema.json"


def schema_path(name: str) -> str:
    """The file system path of schema document ``name`` (for tests and tools)."""
    return os.path.join(SCHEMA_DIR, name)


@lru_cache(maxsize=None)
def _load_text(name: str) -> str:
    if "/" in name or name.startswith("."):
        raise KeyError(f"bad schema document name {name!r}")
    with open(os.path.join(SCHEMA_DIR, name), encoding="utf-8") as f:
        return f.read()


def load_schema(name: str) -> dict:
    """A fresh parsed copy of schema document ``name`` (e.g. ``"defs.json"``)."""
    return json.loads(_load_text(name))


@lru_cache(maxsize=1)
def validator() -> Validator:
    """The process-wide validator over the shipped schema documents."""
    return Validator(load_schema)


def config_errors(config: object) -> list[SchemaError]:
    """Every schema error of a config.json document."""
    return validator().errors(config, CONFIG_SCHEMA)


def first_config_error(config: object) -> SchemaError | None:
    return validator().first_error(config, CONFIG_SCHEMA)
