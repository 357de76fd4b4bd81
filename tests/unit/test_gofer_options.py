"""OCI mount options and the gofer/container split of mounts (actors/gofer/mounts.py)."""

from __future__ import annotations

import pytest

from zentry.actors.gofer import devices, mounts
from zentry.actors.gofer.mounts import check_destinations, parse_options
from zentry.bus.errors import ConfigError, Unsupported
from zentry.sentry.abi import libc as L


def test_flags_set_and_clear_in_order():
    opts = parse_options(["ro", "nosuid", "nodev", "noexec", "rw", "suid"])
    assert opts.flags == L.MS_NODEV | L.MS_NOEXEC
    assert opts.clear == L.MS_RDONLY | L.MS_NOSUID
    assert parse_options(["defaults"]).flags == 0
    assert parse_options(["sync", "dirsync", "remount", "nosymfollow"]).flags == (
        L.MS_SYNCHRONOUS | L.MS_DIRSYNC | L.MS_REMOUNT | L.MS_NOSYMFOLLOW
    )


def test_the_last_atime_mode_wins():
    assert parse_options(["noatime", "relatime"]).flags == L.MS_RELATIME
    assert parse_options(["relatime", "strictatime"]).flags == L.MS_STRICTATIME
    assert parse_options(["nodiratime", "noatime"]).flags == L.MS_NODIRATIME | L.MS_NOATIME
    assert parse_options(["noatime", "atime"]).clear == L.MS_NOATIME


def test_bind_propagation_and_data():
    opts = parse_options(["rbind", "rprivate", "slave", "mode=755", "size=64m", "newinstance", "ptmxmode=0666"])
    assert opts.bind and opts.recursive
    assert opts.propagation == (L.MS_PRIVATE | L.MS_REC, L.MS_SLAVE)
    assert opts.data == ("mode=755", "size=64m", "newinstance", "ptmxmode=0666")
    assert opts.data_string == "mode=755,size=64m,newinstance,ptmxmode=0666"
    assert parse_options(["bind"]).recursive is False
    assert parse_options([]).data_string is None
    assert parse_options(None) == parse_options([])


def test_recursive_attributes_for_mount_setattr():
    opts = parse_options(["rro", "rnosuid", "rnoatime"])
    assert opts.attr_set == L.MOUNT_ATTR_RDONLY | L.MOUNT_ATTR_NOSUID | L.MOUNT_ATTR_NOATIME
    assert opts.attr_clr == L.MOUNT_ATTR__ATIME  # the atime field is replaced as a whole
    flip = parse_options(["rro", "rrw"])
    assert flip.attr_set == 0 and flip.attr_clr == L.MOUNT_ATTR_RDONLY
    assert opts.flags == 0 and opts.data == ()


def test_tmpcopyup_and_refused_options():
    assert parse_options(["tmpcopyup"]).tmpcopyup
    with pytest.raises(Unsupported, match="idmap"):
        parse_options(["idmap"])
    with pytest.raises(ConfigError):
        parse_options([7])


def test_destinations_are_normalised_absolute_paths():
    assert mounts.destination({"destination": "/tmp"}) == "/tmp"
    assert mounts.destination({"destination": "//tmp/"}) == "/tmp"
    assert mounts.destination({"destination": "var/lib/../run"}) == "/var/run"
    assert mounts.destination({"destination": "/../../x"}) == "/x"
    with pytest.raises(ConfigError, match="no destination"):
        mounts.destination({"type": "tmpfs"})


def test_proc_destinations_follow_runcs_rule():
    # only proc on /proc; below it, only what lxcfs provides
    check_destinations([{"destination": "/proc", "type": "proc"},
                        {"destination": "/proc/meminfo", "type": "bind", "source": "/var/lib/lxcfs/proc/meminfo"},
                        {"destination": "/system", "type": "tmpfs"}])  # a prefix of /proc's sibling as text only
    with pytest.raises(ConfigError, match='only a proc file system may be mounted on "/proc"'):
        check_destinations([{"destination": "/proc", "type": "tmpfs"}])
    with pytest.raises(ConfigError, match=r'mounts\[1\]: "/proc/driver" cannot be mounted because it is inside /proc'):
        check_destinations([{"destination": "/proc", "type": "proc"},
                            {"destination": "/proc/driver", "type": "bind", "source": "/tmp"}])


@pytest.mark.parametrize("entry, message", [
    ({"type": "c", "major": 1, "minor": 3}, "no path"),
    ({"path": "/dev/x", "type": "q", "major": 1, "minor": 3}, "type"),
    ({"path": "/dev/x", "type": "c", "major": 1}, "major and minor"),
    ({"path": "/dev/x", "type": "b", "major": 1, "minor": 2, "fileMode": "0666"}, "fileMode"),
])
def test_bad_device_entries(entry, message):
    with pytest.raises(ConfigError, match=message):
        devices._parse_device(entry)


def test_device_entries():
    assert devices._parse_device({"path": "dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}) == (
        "/dev/fuse", 0o020000, 10 << 8 | 229, 0o666, 0, 0)
    assert devices._parse_device({"path": "/dev/p", "type": "p", "uid": 5})[1:] == (0o010000, 0, 0o666, 5, 0)
