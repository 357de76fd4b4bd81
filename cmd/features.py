"""zentry features: the OCI features document (what this runtime supports)."""

import json

HELP = "print the features this runtime supports (OCI features JSON)"


def add_arguments(p) -> None:
    pass


def run(args, ctx) -> int:
    from zentry.actors.oci import features

    print(json.dumps(features(), indent=2))
    return 0
