"""create/run fork their actors before they parse (actors/launch.py, Prefork).

The blanks wait for an assignment while the CLI reads and validates the
bundle. These tests hold the CLI at that point, with config.json a FIFO it
blocks on, and check what becomes of the blanks: killed and reaped before
the CLI exits on bad input, dead with a CLI that is killed, and, once
assigned, actors that log where the CLI was told to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil
import pytest

from helpers.bundle import zentry_command
from helpers.wait import wait_for

pytestmark = pytest.mark.root


def gone(pid: int) -> bool:
    """Dead and reaped: no /proc entry (a zombie still has one)."""
    return not os.path.exists(f"/proc/{pid}")


def held_cli(zentry, bundle, cid: str, *global_flags: str):
    """Start `zentry run` on a bundle whose config.json is a FIFO; return it once its four blanks (the intermediate and the three actors) exist."""
    config = bundle / "config.json"
    text = config.read_text()
    config.unlink()
    os.mkfifo(config)
    proc = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), *global_flags, "run", "--bundle", str(bundle), cid],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cli = psutil.Process(proc.pid)
    assert wait_for(lambda: len(cli.children()) == 4), cli.children()
    return proc, [c.pid for c in cli.children()], config, text


def feed(config, text: str) -> None:
    with open(config, "w") as f:  # unblocks the CLI's open of the FIFO
        f.write(text)


def test_blanks_are_reaped_before_the_cli_exits_on_bad_input(zentry, busybox_bundle):
    proc, blanks, config, _ = held_cli(zentry, busybox_bundle(["true"]), "pf1")
    feed(config, "{ not json")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "config.json" in err.decode()
    # reaped by the CLI itself, not left to init: gone the moment it exited
    assert [p for p in blanks if not gone(p)] == []
    assert not os.path.isdir(zentry.root) or os.listdir(zentry.root) == []


def test_blanks_die_with_a_killed_cli(zentry, busybox_bundle):
    proc, blanks, config, _ = held_cli(zentry, busybox_bundle(["true"]), "pf2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # bound to the CLI (PR_SET_PDEATHSIG): they die with it, and init reaps them
    assert wait_for(lambda: all(gone(p) for p in blanks), timeout=10), [p for p in blanks if not gone(p)]
    config.unlink()
    assert zentry("list", "-q").stdout.strip() == ""


def test_assigned_blanks_run_the_container_and_log_where_told(zentry, busybox_bundle, tmp_path):
    # A failing poststart hook is a warning from the controller: it reaches
    # the --log file in JSON only if the pre-forked controller was given the
    # CLI's logging flags, which it learns only after the fork.
    bundle = busybox_bundle(["sh", "-c", "echo out-of-prefork"], hooks={"poststart": [{"path": "/bin/false"}]})
    log = tmp_path / "log.json"
    proc, blanks, config, text = held_cli(zentry, bundle, "pf3", "--log", str(log), "--log-format", "json")
    feed(config, text)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "out-of-prefork\n"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    warnings = [entry for entry in lines if entry["level"] == "warning" and "poststart hook" in entry["msg"]]
    assert warnings, lines
    # the blanks became the sandbox's actors, and they are gone with it
    assert all(gone(p) for p in blanks)
    assert zentry("list", "-q").stdout.strip() == ""
