"""runc beside zentry in the same test: a private --root, containers removed afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile


class Runc:
    """``runc --root <private> ...``; ``close()`` force-deletes what is left and the root."""

    def __init__(self) -> None:
        self.binary = shutil.which("runc")
        self.root = tempfile.mkdtemp(prefix="rr-", dir="/tmp")

    def __call__(self, *args: object, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        assert self.binary is not None
        # files, not pipes: a detached container keeps the stdio of `create` (see the zentry fixture)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            code = subprocess.run([self.binary, "--root", self.root, *map(str, args)],
                                  input=input.encode() if input is not None else None,
                                  stdin=None if input is not None else subprocess.DEVNULL,
                                  stdout=out, stderr=err, timeout=timeout).returncode
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(args, code, out.read().decode(errors="replace"), err.read().decode(errors="replace"))

    def close(self) -> None:
        listed = self("list", "-q")
        for cid in listed.stdout.split():
            self("delete", "--force", cid)
        shutil.rmtree(self.root, ignore_errors=True)


def runc_run(bundle, cid: str, tmp_path) -> subprocess.CompletedProcess:
    """``runc run`` of ``bundle`` in the foreground (its root under ``tmp_path``),
    the container force-deleted afterwards; skips the test without runc."""
    import pytest

    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed")
    root = tmp_path / "runc-root"
    try:
        return subprocess.run([runc, "--root", str(root), "run", "--bundle", str(bundle), cid], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=bundle)
    finally:
        subprocess.run([runc, "--root", str(root), "delete", "-f", cid], capture_output=True, timeout=30)
