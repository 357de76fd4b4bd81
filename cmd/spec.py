"""zentry spec: write a default config.json, as runc spec does."""

import json
import os

HELP = "write a default config.json into the bundle"


def add_arguments(p) -> None:
    p.add_argument("--bundle", "-b", default=".")
    p.add_argument("--rootless", action="store_true")


def run(args, ctx) -> int:
    from zentry.actors.oci import default_spec
    from zentry.bus.errors import AlreadyExists

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise AlreadyExists(f"{path} already exists; remove it first")
    with open(path, "w") as f:
        json.dump(default_spec(rootless=args.rootless), f, indent=2)
        f.write("\n")
    return 0
