"""pyseccomp, imported without two runs of ``ldconfig -p``.

pyseccomp finds libc and libseccomp with ``ctypes.util.find_library``, which
on Linux forks and execs ``ldconfig -p`` each time: two process spawns (and
a fork of a large Python process) on the path of every container start and
every ``exec``. The sonames are stable ABI names, so they are given directly;
any other library name still goes through the real lookup, and if a soname
cannot be loaded, pyseccomp's own lookup runs as before.
"""

from __future__ import annotations

import ctypes
import sys
import types

#: the sonames pyseccomp asks for (glibc; libseccomp 2.x)
SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def find_library(name: str):
    """The soname for libc and libseccomp; ctypes.util's lookup for anything else."""
    soname = SONAMES.get(name)
    if soname is not None:
        try:
            ctypes.CDLL(soname)
            return soname
        except OSError:
            pass
    return _real_util().find_library(name)


def _real_util():
    util = sys.modules.get("ctypes.util")
    if util is None or getattr(util, "stand_in", False):
        import importlib

        sys.modules.pop("ctypes.util", None)
        util = importlib.import_module("ctypes.util")
    return util


def _import():
    # pyseccomp calls ctypes.util.find_library at import, and only then.
    # Importing ctypes.util itself costs ~6 ms (subprocess, tempfile,
    # locale), on the path of every sandbox start, so unless something has
    # imported it already, pyseccomp sees a stand-in for the time of its
    # import.
    real = sys.modules.get("ctypes.util")
    if real is not None:
        saved = real.find_library
        real.find_library = find_library
        try:
            import pyseccomp as module
        finally:
            real.find_library = saved
        return module
    stand_in = types.ModuleType("ctypes.util")
    stand_in.find_library = find_library
    stand_in.stand_in = True
    sys.modules["ctypes.util"] = stand_in
    ctypes.util = stand_in
    try:
        import pyseccomp as module
    finally:
        sys.modules.pop("ctypes.util", None)
        if getattr(ctypes, "util", None) is stand_in:
            del ctypes.util
    return module


pyseccomp = _import()
