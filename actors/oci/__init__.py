"""OCI runtime documents: reading config.json, the default spec, the features structure."""

from .config import check_config, load_bundle, parse_config
from .default_spec import default_spec
from .features import features
from .validate import SchemaError, Validator

__all__ = [
    "SchemaError",
    "Validator",
    "check_config",
    "default_spec",
    "features",
    "load_bundle",
    "parse_config",
]
