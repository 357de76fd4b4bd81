"""How a CLI call ends: the console script turns a SystemExit into an exit
status (Python's rule: None is 0), with a non-int value on stderr. It runs in
a forked child, as it does for real (it leaves through os._exit)."""

from __future__ import annotations

import gc
import os

import pytest

from zentry.cmd import main as cli

#: what main() raises -> (exit status, what stderr shows)
CASES = [
    (SystemExit(None), 0, ""),
    (SystemExit(), 0, ""),
    (SystemExit(0), 0, ""),
    (SystemExit(3), 3, ""),
    (SystemExit("cannot go on"), 1, "cannot go on\n"),
]


def _fake_main(exc: SystemExit):
    def main(argv=None):
        print("some output")  # buffered: call() must flush it before the process ends
        raise exc

    return main


def _status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    return os.WEXITSTATUS(status)


def _run_entry(out: str) -> int:
    """``entry()`` in a child whose stdout and stderr are ``out``."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            import sys

            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            cli.entry()
        finally:
            os._exit(99)  # entry() never returns
    return _status(pid)


@pytest.mark.parametrize("exc, status, err", CASES, ids=lambda v: repr(v) if isinstance(v, SystemExit) else None)
def test_systemexit_becomes_its_status(tmp_path, monkeypatch, exc, status, err):
    monkeypatch.setattr(cli, "main", _fake_main(exc))
    out = tmp_path / "out"
    assert _run_entry(str(out)) == status
    # (stdout and stderr share the file; which buffer is flushed first does not matter)
    assert sorted(out.read_text().splitlines(keepends=True)) == sorted(["some output\n", *([err] if err else [])])


def test_call_returns_main_s_status(monkeypatch):
    monkeypatch.setattr(cli, "main", lambda argv=None: 7)
    try:
        assert cli.call(["state", "x"]) == 7
    finally:
        gc.enable()  # call() turns collection off, as a short-lived process would
