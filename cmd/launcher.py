"""The fast ``zentry`` launcher: the CLI without ``site``.

Engines run the runtime three to five times per container, so the
interpreter's start-up is paid on every ``create``/``start``/``state``/
``delete``. With ``site`` enabled, Python processes every ``.pth`` file in
site-packages before the first line of zentry runs: setuptools' editable
finder (it imports ``pathlib``), distutils' shim, whatever the host added —
60 to 90 ms per call on the reference machine, against 10 ms for ``-I -S``.

pip writes the console script, and keeps none of a shebang's flags. So the
installer (``.ci/install``, the k8s node installer) runs::

    python3 -m zentry.cmd.launcher [--path BIN]

which replaces the console script with a small one that starts the same
interpreter as ``python -IS`` and puts back exactly what zentry imports:
the site-packages directories that hold its dependencies, and the folders
an editable install maps to ``zentry.<folder>``. Nothing is cached at run
time: the file is written once, at install time, and a later ``pip install``
simply puts the ordinary console script back (still correct, only slower).

``-I`` also ignores ``PYTHON*`` variables and the user's site directory,
which a runtime started by an engine should not depend on anyway.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import sysconfig

FOLDERS = ("actors", "bus", "sentry", "cmd")

#: third-party imports whose directories the launcher must put on sys.path
DEPENDENCIES = ("zmq", "msgpack", "psutil", "sh", "tabulate", "pyseccomp", "prometheus_client")

TEMPLATE = '''#!{python} -IS
# zentry's fast launcher, written by `python -m zentry.cmd.launcher`.
# -IS: no site (.pth processing costs 60-90 ms per call); the paths zentry
# needs are below. `pip install` puts the ordinary console script back.
import sys
sys.path[len(sys.path):] = {paths!r}
{namespace}from zentry.cmd.main import entry
entry()
'''

NAMESPACE = '''import types
zentry = types.ModuleType("zentry")
zentry.__path__ = {roots!r}
sys.modules["zentry"] = zentry
'''


def package_roots() -> list[str]:
    """Directories that, as ``zentry.__path__``, make ``zentry.<folder>`` importable."""
    roots: list[str] = []
    for folder in FOLDERS:
        spec = importlib.util.find_spec(f"zentry.{folder}")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"zentry.{folder} is not importable: install zentry first")
        location = os.path.realpath(list(spec.submodule_search_locations)[0])
        if os.path.basename(location) != folder:
            raise SystemExit(f"zentry.{folder} lives in {location}, not in a folder named {folder}")
        parent = os.path.dirname(location)
        if parent not in roots:
            roots.append(parent)
    return roots


def dependency_paths() -> list[str]:
    paths: list[str] = []
    for name in DEPENDENCIES:
        try:
            spec = importlib.util.find_spec(name)
            found = (spec.origin, bool(spec.submodule_search_locations)) if spec is not None and spec.origin else None
        except ValueError:
            # already imported and replaced by an object without a spec (sh 2.x
            # puts a wrapper in sys.modules): where its file is says the same
            file = getattr(sys.modules[name], "__file__", None)
            found = (file, os.path.basename(file) == "__init__.py") if file else None
        if found is None:
            raise SystemExit(f"{name} is not importable: install zentry's dependencies first")
        origin = os.path.dirname(found[0])
        top = os.path.dirname(origin) if found[1] else origin
        if top not in paths:
            paths.append(top)
    return paths


def render() -> str:
    roots = package_roots()
    deps = dependency_paths()
    stdlib = {os.path.realpath(p) for p in (sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"))}
    paths = [p for p in deps if os.path.realpath(p) not in stdlib]
    # zentry is a namespace package: set its __path__ to where the folders
    # are (site-packages/zentry, or the checkout of an editable install).
    return TEMPLATE.format(python=sys.executable, paths=paths, namespace=NAMESPACE.format(roots=roots))


def default_path() -> str:
    return os.path.join(sysconfig.get_path("scripts"), "zentry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zentry.cmd.launcher", description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=default_path(), help="where to write the launcher (default: the console script beside this python)")
    parser.add_argument("--print", action="store_true", help="print the launcher instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.print:
        sys.stdout.write(text)
        return 0
    tmp = f"{args.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.rename(tmp, args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
