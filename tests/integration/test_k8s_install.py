"""k8s/install-node.sh, as the node installer runs it: from a copy of the source
(what k8s/Dockerfile puts in the image), with the host's Python, into a
prefix. What it installed must be a working runtime: the fast launcher, a
container run with it, and containerd's drop-in pointing at it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
#: what k8s/Dockerfile copies into the image
SOURCE = ("actors", "bus", "cmd", "sentry", "k8s", "pyproject.toml", "setup.py", "README.md")


def test_install_node_script_installs_a_working_runtime(tmp_path, busybox_bundle):
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in SOURCE:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    env = dict(os.environ, ZENTRY_PREFIX=str(tmp_path / "venv"), ZENTRY_LINK=str(tmp_path / "bin" / "zentry"),
               ZENTRY_CONF_D=str(tmp_path / "conf.d"), PYTHON=python, ZENTRY_NO_APT="1")
    r = subprocess.run(["sh", str(src / "k8s" / "install-node.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    link = tmp_path / "bin" / "zentry"
    # the launcher: the venv's own interpreter as `python -IS`, the package in the venv, not this checkout
    launcher = link.resolve().read_text()
    assert launcher.splitlines()[0] == f"#!{tmp_path / 'venv' / 'bin' / 'python'} -IS"
    assert str(REPO) not in launcher and str(tmp_path / "venv") in launcher
    assert subprocess.run([str(link), "--version"], capture_output=True, text=True, check=True).stdout.startswith("zentry version ")
    bundle = busybox_bundle(["sh", "-c", "echo installed-from-source"])
    r = subprocess.run([str(link), "--root", str(tmp_path / "root"), "run", "-b", str(bundle), "k8s1"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "installed-from-source\n"), r.stderr
    drop_in = (tmp_path / "conf.d" / "zentry.toml").read_text()
    assert f'BinaryName = "{link}"' in drop_in and 'runtime_type = "io.containerd.runc.v2"' in drop_in
