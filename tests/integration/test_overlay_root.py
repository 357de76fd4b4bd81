"""An overlay root with a tmpfs upper layer (annotation dev.zentry.rootfs.overlay):
the container may write anywhere in its root, the bundle's rootfs never changes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.root

OVERLAY = "dev.zentry.rootfs.overlay"


def test_writes_go_to_memory_and_the_bundle_rootfs_is_unchanged(zentry, busybox_bundle):
    script = "echo data > /etc/new-file; rm /bin/true; cat /etc/new-file; test -e /bin/true || echo gone; grep ' / ' /proc/mounts | cut -d' ' -f3"
    bundle = busybox_bundle(["sh", "-c", script], annotations={OVERLAY: "memory"}, root={"readonly": False})
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "true").exists()
    r = zentry("run", "--bundle", bundle, "ov1")
    assert (r.returncode, r.stdout) == (0, "data\ngone\noverlay\n"), r.stderr
    assert not (rootfs / "etc" / "new-file").exists()
    assert (rootfs / "bin" / "true").exists()
    # and a second container from the same bundle starts from the untouched rootfs
    r = zentry("run", "--bundle", bundle, "ov2")
    assert (r.returncode, r.stdout) == (0, "data\ngone\noverlay\n"), r.stderr


def test_the_upper_layer_has_the_size_asked_for(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "dd if=/dev/zero of=/big bs=64k count=64 2>&1; echo rc=$?"], annotations={OVERLAY: "memory:1m"}, root={"readonly": False})
    r = zentry("run", "--bundle", bundle, "ov3")
    assert r.returncode == 0, r.stderr
    assert "No space left on device" in r.stdout and "rc=1" in r.stdout


def test_root_readonly_still_wins(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "touch /x 2>&1; echo rc=$?"], annotations={OVERLAY: "memory"}, root={"readonly": True})
    r = zentry("run", "--bundle", bundle, "ov4")
    assert r.returncode == 0, r.stderr
    assert "Read-only file system" in r.stdout and "rc=1" in r.stdout


@pytest.mark.parametrize("value", ["disk", "memory:", "memory:lots", "memory:0"])
def test_a_bad_value_is_refused_cleanly(zentry, busybox_bundle, tmp_path, value):
    bundle = busybox_bundle(["true"], annotations={OVERLAY: value})
    log = tmp_path / "log.json"
    r = zentry("--log", log, "--log-format", "json", "create", "--bundle", bundle, "ov5")
    assert r.returncode == 1
    assert [line for line in r.stderr.splitlines() if line] == [f'zentry: annotation {OVERLAY}="{value}": use "memory" or "memory:SIZE" (e.g. memory:64m)']
    assert json.loads(log.read_text().splitlines()[-1])["level"] == "error"
    assert zentry("list", "-q").stdout.strip() == ""
