"""Bad input: one clear line on stderr, a JSON error line in --log, non-zero exit, nothing left behind."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.root


def check_error(r, log_file, needle: str) -> None:
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("zentry: ") and needle in lines[0], lines[0]
    entries = [json.loads(l) for l in log_file.read_text().splitlines() if l.strip()]
    errors = [e for e in entries if e["level"] == "error"]
    assert errors and needle in errors[-1]["msg"]
    assert set(errors[-1]) >= {"level", "msg", "time"}


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c["process"].__setitem__("args", []), "process.args"),
        (lambda c: c.__setitem__("ociVersion", "2.0.0"), "ociVersion"),
        (lambda c: c["process"].__setitem__("cwd", "relative"), "cwd"),
        (lambda c: c["root"].__setitem__("path", "/nonexistent-rootfs"), "root"),
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "namespaces"),
    ],
)
def test_invalid_config_is_refused_cleanly(zentry, busybox_bundle, tmp_path, mutate, needle):
    bundle = busybox_bundle(["true"])
    cfg = json.loads((bundle / "config.json").read_text())
    mutate(cfg)
    (bundle / "config.json").write_text(json.dumps(cfg))
    log = tmp_path / "log.json"
    r = zentry_with_log(zentry, log, "create", "--bundle", bundle, "bad1")
    check_error(r, log, needle)
    assert zentry("list", "-q").stdout.strip() == ""


def zentry_with_log(zentry, log, *args):
    # global flags go before the subcommand; the fixture puts --root first
    return zentry("--log", log, "--log-format", "json", *args)


def test_missing_executable_maps_to_engine_text(zentry, busybox_bundle, tmp_path):
    log = tmp_path / "log.json"
    bundle = busybox_bundle(["no-such-binary"])
    r = zentry_with_log(zentry, log, "create", "--bundle", bundle, "nx1")
    check_error(r, log, "executable file not found in $PATH")
    assert zentry("list", "-q").stdout.strip() == ""
    bundle = busybox_bundle(["/bin/no-such-binary"])
    r = zentry_with_log(zentry, log, "run", "--bundle", bundle, "nx2")
    check_error(r, log, "no such file or directory")


def test_unknown_and_invalid_ids(zentry, tmp_path):
    log = tmp_path / "log.json"
    check_error(zentry_with_log(zentry, log, "start", "ghost"), log, "does not exist")
    check_error(zentry_with_log(zentry, log, "state", "../x"), log, "invalid container id")
    check_error(zentry_with_log(zentry, log, "kill", "ghost", "TERM"), log, "does not exist")


def test_duplicate_id_refused_and_original_untouched(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("create", "--bundle", bundle, "dup").returncode == 0
    log = tmp_path / "log.json"
    check_error(zentry_with_log(zentry, log, "create", "--bundle", bundle, "dup"), log, "already exists")
    assert json.loads(zentry("state", "dup").stdout)["status"] == "created"
    assert zentry("delete", "dup").returncode == 0


def test_wrong_state_is_a_user_error(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("create", "--bundle", bundle, "ws").returncode == 0
    log = tmp_path / "log.json"
    check_error(zentry_with_log(zentry, log, "resume", "ws"), log, "cannot resume container 'ws' in state created")
    assert zentry("delete", "ws").returncode == 0


def test_systemd_cgroup_flag_fails_clearly(zentry, busybox_bundle, tmp_path):
    log = tmp_path / "log.json"
    bundle = busybox_bundle(["true"])
    check_error(zentry("--log", log, "--log-format", "json", "--systemd-cgroup", "create", "--bundle", bundle, "sd"), log, "systemd")


def test_cgroup_limit_the_kernel_refuses_fails_create_cleanly(zentry, busybox_bundle, tmp_path):
    # The init is forked before its cgroup is made (the kernel's migration wait
    # overlaps the fork): a limit the kernel refuses must still leave nothing
    # behind, the forked init included (the leak check after every test).
    bundle = busybox_bundle(["true"], linux={"resources": {"cpu": {"cpus": "4095"}}})
    log = tmp_path / "log.json"
    r = zentry_with_log(zentry, log, "create", "--bundle", bundle, "cg1")
    check_error(r, log, "cpuset")
    assert zentry("list", "-q").stdout.strip() == ""
    assert not os.path.exists(os.path.join(zentry.root, "cg1"))


def test_usage_errors_exit_1_as_runc_with_one_line_and_a_log_line(zentry, tmp_path):
    from helpers.runc_cli import Runc

    runc = Runc()
    try:
        for argv in (["kill"], ["state", "--foo", "x"], ["no-such-command"], ["--root", "/x", "bogus", "a"], ["--log-format", "xml", "list"],
                     ["list", "--format", "bogus"], ["update"]):
            rr = runc(*argv)
            log = tmp_path / "usage.json"
            if argv[0] == "--log-format":
                rz = zentry(*argv)
            else:
                rz = zentry_with_log(zentry, log, *argv)
            assert rr.returncode == rz.returncode == (3 if argv[0] in ("no-such-command", "--root") else 1), (argv, rz.stderr, rr.stderr)
            lines = rz.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("zentry: "), rz.stderr
            if argv[0] != "--log-format":
                assert json.loads(log.read_text().splitlines()[-1])["level"] == "error"
    finally:
        runc.close()


def test_a_log_file_that_cannot_be_opened_is_refused_as_runc(zentry, tmp_path):
    from helpers.runc_cli import Runc

    runc = Runc()
    try:
        for bad in ("invalid:/path", str(tmp_path / "no-such-dir" / "log"), str(tmp_path)):
            rr = runc("--log", bad, "list")
            rz = zentry("--log", bad, "list")
            assert rr.returncode == 1 and rz.returncode == 1, (bad, rz.stderr)
            assert rz.stderr.startswith("zentry: cannot open log file") and len(rz.stderr.strip().splitlines()) == 1
            assert rz.stdout == ""
    finally:
        runc.close()


def test_console_socket_without_terminal_and_absurd_preserve_fds_are_refused_as_runc(zentry, busybox_bundle, tmp_path):
    """Refused before anything is launched: one line, nothing left (runc refuses both too)."""
    from helpers.runc_cli import Runc

    bundle = busybox_bundle(["sleep", "30"])
    runc = Runc()
    try:
        for extra in (["--console-socket", "/nonexistent/sock"], ["--preserve-fds", "11805916207174113034"]):
            rr = runc("create", "--bundle", bundle, *extra, "rc1", timeout=20)
            assert rr.returncode != 0, (extra, rr.stderr)
            assert runc("list", "-q").stdout.strip() == ""
            log = tmp_path / "log.json"
            rz = zentry_with_log(zentry, log, "create", "--bundle", bundle, *extra, "zc1")
            check_error(rz, log, "--console-socket" if extra[0] == "--console-socket" else "--preserve-fds")
            assert zentry("list", "-q").stdout.strip() == ""
            assert not os.path.exists(os.path.join(zentry.root, "zc1"))
    finally:
        runc.close()
