"""OCI runtime documents: reading config.json, the default spec, the features structure."""

from .config import PRESERVE_FDS_ANNOTATION, SPAWNER_ANNOTATION, STRACE_ANNOTATION, check_config, load_bundle, parse_config
from .default_spec import default_spec
from .features import features
from .validate import SchemaError, Validator

__all__ = [
    "PRESERVE_FDS_ANNOTATION",
    "SPAWNER_ANNOTATION",
    "STRACE_ANNOTATION",
    "SchemaError",
    "Validator",
    "check_config",
    "default_spec",
    "features",
    "load_bundle",
    "parse_config",
]
