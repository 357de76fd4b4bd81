"""Path resolution inside a root (actors/gofer/resolve.py): no root privileges needed."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from zentry.actors.gofer.resolve import MAXSYMLINKS, ensure_in_root, open_in_root, resolve_in_root
from zentry.sentry.abi import libc


@pytest.fixture
def tree(tmp_path):
    """root/ with dirs, files and symlinks that try to leave it; outside/ next to it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("container passwd")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "file").write_text("lib file")
    (root / "lib").symlink_to("usr/lib")  # relative
    (root / "abs").symlink_to("/usr/lib")  # absolute: means <root>/usr/lib
    (root / "up").symlink_to("../../../../../../..")  # climbs to the host "/"
    (root / "esc").symlink_to(str(outside))  # an absolute host path
    (root / "chain1").symlink_to("chain2")
    (root / "chain2").symlink_to("/chain3")
    (root / "chain3").symlink_to("../lib/../../etc")
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("/loop1")
    (root / "self").symlink_to("self")
    return root, outside


def test_plain_and_relative_symlink(tree):
    root, _ = tree
    assert resolve_in_root(str(root), "/etc/passwd") == f"{root}/etc/passwd"
    assert resolve_in_root(str(root), "lib/file") == f"{root}/usr/lib/file"
    assert resolve_in_root(str(root), "/") == str(root)
    assert resolve_in_root(str(root) + "/", "") == str(root)


def test_absolute_symlink_is_relative_to_root(tree):
    root, _ = tree
    assert resolve_in_root(str(root), "/abs/file") == f"{root}/usr/lib/file"


def test_dotdot_stops_at_root(tree):
    root, _ = tree
    assert resolve_in_root(str(root), "/../../../etc/passwd") == f"{root}/etc/passwd"
    assert resolve_in_root(str(root), "usr/../../../../etc/./passwd") == f"{root}/etc/passwd"


def test_symlink_climbing_out_is_clamped(tree):
    root, outside = tree
    assert resolve_in_root(str(root), "/up/etc/passwd") == f"{root}/etc/passwd"
    # the host path does not exist inside the root: resolved lexically, still inside
    assert resolve_in_root(str(root), "/esc/secret") == f"{root}{outside}/secret"
    assert resolve_in_root(str(root), "/up" + str(outside) + "/secret") == f"{root}{outside}/secret"


def test_nested_symlink_chain(tree):
    root, _ = tree
    # chain1 -> chain2 -> /chain3 -> ../lib/../../etc; ".." after a symlink is
    # physical, as in the kernel: lib is usr/lib, so lib/.. is usr, then the root
    assert resolve_in_root(str(root), "/chain1/passwd") == f"{root}/etc/passwd"
    assert resolve_in_root(str(root), "/lib/../lib/file") == f"{root}/usr/lib/file"


def test_symlink_loops_give_eloop(tree):
    root, _ = tree
    for path in ("/loop1", "/loop2/x", "/self", "/etc/../self/a/b"):
        with pytest.raises(OSError) as info:
            resolve_in_root(str(root), path)
        assert info.value.errno == errno.ELOOP, path


def test_a_long_but_finite_chain_resolves_and_a_longer_one_fails(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "target").mkdir()
    (root / f"l{MAXSYMLINKS}").symlink_to("target")
    for i in range(MAXSYMLINKS - 1, -1, -1):
        (root / f"l{i}").symlink_to(f"l{i + 1}")
    assert resolve_in_root(str(root), "/l1") == f"{root}/target"  # 40 links
    with pytest.raises(OSError) as info:
        resolve_in_root(str(root), "/l0")  # 41 links
    assert info.value.errno == errno.ELOOP


def test_missing_tail_and_not_a_directory(tree):
    root, _ = tree
    assert resolve_in_root(str(root), "/lib/new/dir/../x") == f"{root}/usr/lib/new/x"
    with pytest.raises(OSError) as info:
        resolve_in_root(str(root), "/etc/passwd/x")
    assert info.value.errno == errno.ENOTDIR


def test_ensure_in_root_creates_inside_through_escaping_symlinks(tree):
    root, outside = tree
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = ensure_in_root(root_fd, "/esc/newdir/sub", directory=True)
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}{outside}/newdir/sub"
        os.close(fd)
        fd = ensure_in_root(root_fd, "/up/tmp/evil/file", directory=False)
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}/tmp/evil/file"
        assert (root / "tmp" / "evil" / "file").is_file()
        os.close(fd)
        (root / "dangling").symlink_to("/made/by/link")
        fd = ensure_in_root(root_fd, "/dangling", directory=True)
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}/made/by/link"
        os.close(fd)
        fd = ensure_in_root(root_fd, "/etc/passwd", directory=False)  # exists: returned as is
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}/etc/passwd"
        os.close(fd)
    finally:
        os.close(root_fd)
    assert sorted(os.listdir(outside)) == ["secret"]


def test_open_in_root_never_opens_host_files(tree):
    root, outside = tree
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for path in ("/etc/passwd", "../../../../etc/passwd", "/up/etc/passwd", "/chain1/passwd"):
            fd = open_in_root(root_fd, path, os.O_RDONLY)
            try:
                assert os.read(fd, 100) == b"container passwd", path
            finally:
                os.close(fd)
        for path in ("/esc/secret", "/up" + str(outside) + "/secret", "../.." + str(outside) + "/secret"):
            with pytest.raises(FileNotFoundError):
                os.close(open_in_root(root_fd, path, os.O_RDONLY))
        with pytest.raises(OSError) as info:
            open_in_root(root_fd, "/loop1", os.O_RDONLY)
        assert info.value.errno == errno.ELOOP
        # magic links are refused even if the root had a /proc
        (root / "proc").symlink_to("/proc")  # absolute: <root>/proc, which is the link itself
        with pytest.raises(OSError):
            os.close(open_in_root(root_fd, "/proc/self/root/etc/passwd", os.O_RDONLY))
        with pytest.raises(FileNotFoundError):  # <root><outside> does not exist
            os.close(open_in_root(root_fd, "/esc/created", os.O_WRONLY | os.O_CREAT, 0o600))
        os.close(open_in_root(root_fd, "/up/etc/created", os.O_WRONLY | os.O_CREAT, 0o600))
        assert (root / "etc" / "created").stat().st_mode & 0o777 == 0o600
        assert sorted(os.listdir(outside)) == ["secret"]
    finally:
        os.close(root_fd)


def test_open_in_root_sets_cloexec(tree):
    root, _ = tree
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    fd = open_in_root(root_fd, "/etc/passwd", os.O_RDONLY)
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
        os.close(root_fd)


def test_kernel_struct_sizes():
    assert ctypes.sizeof(libc.OpenHow) == 24  # OPEN_HOW_SIZE_VER0
    assert ctypes.sizeof(libc.MountAttr) == 32  # MOUNT_ATTR_SIZE_VER0
