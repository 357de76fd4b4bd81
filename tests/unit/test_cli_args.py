"""The CLI's own argument rules, without a container: update's sizes and flags, ps's filter, kill's signals, ids, usage errors."""

from __future__ import annotations

import json
import signal

import pytest

from zentry.actors.state import MAX_ID_LENGTH, validate_id
from zentry.bus.errors import InvalidArgument, Unsupported
from zentry.cmd import main as cli
from zentry.cmd.kill import parse_signal
from zentry.cmd.ps import filter_ps_output
from zentry.cmd.update import parse_size, resources_from, unchanged_removed, updatable


@pytest.mark.parametrize("text, value", [
    ("64m", 64 << 20), ("64M", 64 << 20), ("64mb", 64 << 20), ("64MiB", 64 << 20), ("1.5g", 3 << 29),
    ("512k", 512 << 10), ("100000", 100000), ("-1", -1), ("0", 0), ("2 GB", 2 << 30), ("1t", 1 << 40),
])
def test_sizes_as_runc(text, value):
    assert parse_size("memory", text) == value


@pytest.mark.parametrize("text", ["64x", "lots", "", "-2", "m", "1.2.3m", "64 m b", "0x10", "9" * 400, "8e", "16777216p"])
def test_bad_sizes(text):
    with pytest.raises(InvalidArgument, match="invalid value for --memory"):
        parse_size("memory", text)


def _update_args(*argv: str):
    return cli.build_parser("update").parse_args(["update", *argv, "c1"])


def test_update_flags_become_linux_resources():
    args = _update_args("--memory", "64m", "--memory-swap", "128m", "--memory-reservation", "-1", "--cpuset-mems", "0",
                        "--cpuset-cpus", "0-1", "--cpu-share", "512", "--cpu-quota", "-1", "--cpu-period", "100000",
                        "--cpu-rt-runtime", "950", "--cpu-rt-period", "1000000", "--blkio-weight", "500", "--pids-limit", "-1",
                        "--cpu-idle", "1", "--cpu-burst", "10")
    assert resources_from(args) == {
        "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": -1},
        "cpu": {"mems": "0", "cpus": "0-1", "shares": 512, "quota": -1, "period": 100000, "realtimeRuntime": 950,
                "realtimePeriod": 1000000, "idle": 1, "burst": 10},
        "blockIO": {"weight": 500},
        "pids": {"limit": -1},
    }
    # the old spelling still works
    assert resources_from(_update_args("--cpu-shares", "2")) == {"cpu": {"shares": 2}}


def test_update_zero_is_unchanged_and_unlimited_memory_lifts_swap():
    assert resources_from(_update_args("--pids-limit", "0", "--memory", "0", "--cpu-quota", "0")) == {}
    assert resources_from(_update_args("--memory", "-1")) == {"memory": {"limit": -1, "swap": -1}}
    assert unchanged_removed({"memory": {"limit": 0, "reservation": 0, "swap": 0}, "cpu": {"cpus": "", "mems": "", "shares": 0},
                              "pids": {"limit": 0}, "blockIO": {"weight": 0}}) == {}


@pytest.mark.parametrize("argv, needle", [
    (["--cpu-period", "-5"], "--cpu-period"), (["--cpu-quota", "1.5"], "--cpu-quota"),
    (["--pids-limit", "many"], "--pids-limit"), (["--blkio-weight", "5"], "10 to 1000"),
])
def test_update_bad_flags(argv, needle):
    with pytest.raises(InvalidArgument, match=needle):
        resources_from(_update_args(*argv))


def test_update_rdt_is_refused():
    with pytest.raises(Unsupported, match="Intel RDT"):
        resources_from(_update_args("--l3-cache-schema", "L3:0=f"))


def test_update_resources_file(tmp_path, monkeypatch):
    doc = tmp_path / "r.json"
    doc.write_text(json.dumps({"memory": {"limit": 1 << 26, "swap": 0}, "pids": {"limit": 9}}))
    # --resources wins over every other flag, as runc
    assert resources_from(_update_args("-r", str(doc), "--memory", "1g")) == {"memory": {"limit": 1 << 26}, "pids": {"limit": 9}}
    for text, needle in (('{"memory": {"limit": "big"}}', "memory.limit"), ("[1]", "JSON object"), ("{", "not JSON"),
                         ('{"pids": {}}', "limit"), ('{"cpu": {"cpus": 3}}', "cpu.cpus")):
        doc.write_text(text)
        with pytest.raises(InvalidArgument, match=needle):
            resources_from(_update_args("-r", str(doc)))
    with pytest.raises(InvalidArgument, match="not a regular file"):
        resources_from(_update_args("-r", "/dev/zero"))  # read in bounded size, never grown into memory
    with pytest.raises(InvalidArgument, match="Is a directory"):
        resources_from(_update_args("-r", str(tmp_path)))
    with pytest.raises(InvalidArgument, match="No such file"):
        resources_from(_update_args("-r", str(tmp_path / "missing")))
    doc.write_text(" " * (1 << 20) + "{}")
    with pytest.raises(InvalidArgument, match="larger than"):
        resources_from(_update_args("-r", str(doc)))


PS_EF = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 14:42 ?        00:00:01 /sbin/init
root        4242       1  0 14:50 ?        00:00:00 sleep 60
root        4243    4242  0 14:50 pts/0    00:00:00 sh -c x y
"""


def test_ps_keeps_the_header_and_the_containers_lines():
    assert filter_ps_output(PS_EF, {4242, 4243}) == PS_EF.splitlines()[:1] + PS_EF.splitlines()[2:]
    assert filter_ps_output(PS_EF, set()) == PS_EF.splitlines()[:1]
    assert filter_ps_output("  PID COMMAND\n 4242 sleep\n    7 x\n", {4242}) == ["  PID COMMAND", " 4242 sleep"]
    with pytest.raises(InvalidArgument, match="no PID column"):
        filter_ps_output("COMMAND\nsleep\n", {1})
    with pytest.raises(InvalidArgument, match="cannot read a pid"):
        filter_ps_output("PID CMD\nabc x\n", {1})


def test_ps_words_after_the_id_are_ps_arguments():
    args = cli.build_parser("ps").parse_args(["ps", "c1", "-ef"])
    assert args.container_id == "c1" and args.ps_args == ["-ef"] and args.format == "table"
    args = cli.build_parser("ps").parse_args(["ps", "-f", "json", "c1"])
    assert args.format == "json" and args.ps_args == []


@pytest.mark.parametrize("text, number", [("0", 0), ("15", 15), ("TERM", 15), ("SIGTERM", 15), ("term", 15),
                                          ("", 15), ("KILL", 9), ("SIGRTMIN", int(signal.SIGRTMIN)), ("64", 64)])
def test_signals_as_runc(text, number):
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["65", "-1", "1.5", "NOPE", "SIG", "SIGTERMX"])
def test_bad_signals(text):
    with pytest.raises(InvalidArgument):
        parse_signal(text)


@pytest.mark.parametrize("cid", ["nu-ünï", "ünï", "a,b", "a b", "a/b", ".", "..", "", "x" * (MAX_ID_LENGTH + 1), "٣"])
def test_ids_runc_refuses(cid):
    with pytest.raises(InvalidArgument, match="invalid container id"):
        validate_id(cid)


@pytest.mark.parametrize("cid", ["a", "A_b-c.d+e", "x" * MAX_ID_LENGTH, "0"])
def test_ids_runc_accepts(cid):
    assert validate_id(cid) == cid


def test_usage_errors_are_one_line_and_status_1(capsys, monkeypatch):
    monkeypatch.setattr(cli, "configure", lambda *a, **k: None)  # leave the test run's logging as it is
    assert cli.main(["kill"]) == 1
    assert cli.main(["state", "--bogus", "x"]) == 1
    assert cli.main(["no-such-command"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("zentry: ") for line in err), err
    assert "unknown command 'no-such-command'" in err[2]


def test_update_applies_what_runc_updates_and_ignores_the_rest():
    podman_like = {
        "memory": {"limit": 1 << 26, "swap": 1 << 27, "swappiness": 10, "disableOOMKiller": False},
        "cpu": {"shares": 1024, "quota": 0, "cpus": ""},
        "devices": [{"allow": False, "access": "rwm"}],
        "blockIO": {"weight": 0, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "pids": {"limit": 0},
        "unified": {"memory.high": "max"},
    }
    assert unchanged_removed(updatable(podman_like)) == {
        "memory": {"limit": 1 << 26, "swap": 1 << 27}, "cpu": {"shares": 1024}, "unified": {"memory.high": "max"},
    }
