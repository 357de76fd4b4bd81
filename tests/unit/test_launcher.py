"""The fast launcher (cmd/launcher.py): a console script that starts Python with -IS."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from zentry.cmd import launcher


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "zentry"
    assert launcher.main(["--path", str(path)]) == 0
    return path


def test_launcher_runs_python_without_site(script):
    text = script.read_text()
    assert text.splitlines()[0] == f"#!{sys.executable} -IS"
    assert os.access(script, os.X_OK)
    # Its set-up, run under -IS, is enough to import zentry and every dependency.
    setup = text.split("from zentry.cmd.main import entry")[0]
    probe = setup + "import zmq, msgpack, psutil, sh, tabulate, pyseccomp, zentry.bus.client, zentry.actors.launch\nprint(sys.flags.no_site, sys.flags.isolated)\n"
    out = subprocess.run([sys.executable, "-IS", "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_launcher_starts_the_cli(script, tmp_path):
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("zentry version ")
    # a command that writes a file and prints nothing; output and exit status survive the fast exit
    out = subprocess.run([str(script), "spec"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "config.json").exists()
    # a bad verb is still a usage error from the full parser: one line, exit 1 as runc
    out = subprocess.run([str(script), "no-such-command"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3  # as runc
    assert "unknown command" in out.stderr and out.stderr.count("\n") == 1


def test_launcher_ignores_python_environment(script, tmp_path):
    """-I: PYTHONPATH cannot put another zentry (or anything) in front of the real one."""
    fake = tmp_path / "fake" / "zentry" / "cmd"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "main.py").write_text("def entry():\n    raise SystemExit('imported the fake zentry')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"))
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fake" not in out.stderr


def test_installed_console_script_is_the_launcher():
    """.ci/install writes the launcher over pip's console script (the one tests and benches run)."""
    path = os.path.join(sysconfig.get_path("scripts"), "zentry")
    if os.environ.get("CI") != "true" and not os.path.exists(path):
        pytest.skip("zentry is not installed beside this interpreter (run .ci/install)")
    with open(path) as f:
        first = f.readline().rstrip("\n")
    assert first.endswith(" -IS"), f"{path} is not the fast launcher (first line {first!r}); .ci/install writes it"


def test_version_constant_matches_pyproject():
    """`zentry --version` reads zentry.cmd.VERSION (no importlib.metadata at run time)."""
    import re
    from pathlib import Path

    from zentry.cmd import VERSION

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    declared = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)
    assert VERSION == declared


def test_long_running_commands_turn_the_collector_back_on():
    """The console script runs with gc off; tap/events/wait/metrics-server and a
    foreground run/exec (which may live for hours) must turn it back on."""
    import gc
    import inspect

    from zentry.cmd import events, exec_, long_running, metrics_server, run, tap, wait

    for module in (tap, events, wait, metrics_server, run, exec_):
        assert "long_running()" in inspect.getsource(module), module.__name__
    gc.disable()
    try:
        long_running()
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
