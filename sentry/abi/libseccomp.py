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
import ctypes.util

#: the sonames pyseccomp asks for (glibc; libseccomp 2.x)
SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _import():
    real = ctypes.util.find_library

    def find_library(name: str):
        soname = SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        return real(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp as module
    finally:
        ctypes.util.find_library = real
    return module


pyseccomp = _import()
