"""OCI linux.seccomp translation, the seccomp-agent handshake, features, /proc views and the generated doc."""

import errno
import json
import os
import socket
import threading

import pyseccomp
import pytest

from zentry.bus.errors import ConfigError, Unsupported
from zentry.sentry import docgen, oci
from zentry.sentry.handlers import emulate, procfs
from zentry.sentry.kernel import ContainerView

BASE = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]}


def test_a_profile_translates_to_rules():
    p = oci.translate({
        **BASE,
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["getcwd", "chmod", "no_such_call_on_this_kernel"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"}]},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        ],
    })
    assert p.default == pyseccomp.ALLOW and p.flags == 2
    assert [(r.nr, r.action) for r in p.rules[:2]] == [(79, pyseccomp.ERRNO(13)), (90, pyseccomp.ERRNO(13))]
    assert p.rules[2].action == pyseccomp.ERRNO(errno.EPERM) and p.rules[2].conds[0].op == pyseccomp.NE
    assert len(p.rules) == 3  # the rule equal to the default is dropped
    assert len(oci.compile_profile({**BASE, "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_KILL_PROCESS"}]})) > 0


@pytest.mark.parametrize(
    "profile, match",
    [
        ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown seccomp action"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}, "does not take an errno"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "is not an errno"),
        ({**BASE, "architectures": ["SCMP_ARCH_VAX"]}, "unknown architecture"),
        ({**BASE, "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}, "unknown flag"),
        ({**BASE, "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}, "names must be a non-empty"),
        ({**BASE, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]}, "does not take an errno"),
        ({**BASE, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}, "must be 0..5"),
        ({**BASE, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_LIKE"}]}]}, "unknown operator"),
        ({**BASE, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}, "not a uint64"),
        ({**BASE, "listenerMetadata": "x"}, "without listenerPath"),
    ],
)
def test_invalid_profiles_are_config_errors_naming_the_field(profile, match):
    with pytest.raises(ConfigError, match=match):
        oci.translate(profile)


def test_notify_cannot_be_stacked_under_the_sentry_but_can_alone():
    profile = {**BASE, "listenerPath": "/run/agent.sock", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}
    with pytest.raises(Unsupported, match="one seccomp listener"):
        oci.translate(profile, stacked=True)
    alone = oci.translate(profile, stacked=False)
    assert alone.flags & 8 and alone.rules[0].action == pyseccomp.NOTIFY
    with pytest.raises(ConfigError, match="without listenerPath"):
        oci.translate({**BASE, "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}, stacked=False)


def test_x86_64_must_be_among_the_architectures():
    with pytest.raises(Unsupported, match="SCMP_ARCH_X86_64"):
        oci.translate({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]})


def test_the_agent_receives_one_state_document_and_the_fd(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = {}

    def agent():
        conn, _ = srv.accept()
        with conn:
            got["state"], got["fds"] = oci.receive_from_agent_socket(conn)

    t = threading.Thread(target=agent)
    t.start()
    r, w = os.pipe()
    state = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 42, "bundle": "/b"}
    oci.send_to_agent(path, w, state, pid=42, metadata="MKNOD=/dev/null")
    t.join(10)
    srv.close()
    assert got["state"] == {"ociVersion": "1.2.0", "fds": ["seccompFd"], "pid": 42, "metadata": "MKNOD=/dev/null", "state": state}
    (fd,) = got["fds"]
    os.write(fd, b"through")
    assert os.read(r, 16) == b"through"
    for f in (fd, r, w):
        os.close(f)


def test_features():
    f = oci.supported()
    assert "SCMP_ACT_NOTIFY" in f["actions"] and "SCMP_CMP_MASKED_EQ" in f["operators"]
    assert f["archs"] == ["SCMP_ARCH_X86_64"] and "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" in f["knownFlags"]
    json.dumps(f)


def test_proc_views_follow_the_limits():
    v = ContainerView("c", "h", memory_limit_bytes=128 << 20, cpu_quota_us=150000, cpu_period_us=100000, cpuset="0-7")
    assert procfs.parse_cpulist("0-2,5,7-7") == [0, 1, 2, 5, 7]
    mem = procfs.render(b"/proc/meminfo", v).decode()
    assert "MemTotal:         131072 kB" in mem
    free = int(next(l for l in mem.splitlines() if l.startswith("MemFree")).split()[1])
    assert free <= 131072
    host = sorted(os.sched_getaffinity(0))
    n = min(2, len(host))
    assert procfs.render(b"/proc/cpuinfo", v).decode().count("processor\t:") == n
    assert sum(1 for l in procfs.render(b"/proc/stat", v).decode().splitlines() if l[:3] == "cpu" and l[3].isdigit()) == n
    assert procfs.render(b"/sys/devices/system/cpu/online", v) == (b"0\n" if n == 1 else b"0-%d\n" % (n - 1))
    assert procfs.render(b"/proc/version", v) is None
    # no uptime view (the container's time namespace counts from its start); loadavg without a host pid
    assert procfs.render(b"/proc/uptime", v) is None
    fields = procfs.render(b"/proc/loadavg", v).split()  # no init_pid: no processes known
    assert len(fields) == 5 and fields[3:] == [b"1/1", b"1"]


def test_utsname_and_sysinfo_bytes():
    v = ContainerView("c", "web", domainname="example", memory_limit_bytes=64 << 20)
    uts = emulate.utsname_bytes(v)
    fields = [uts[i * 65:(i + 1) * 65].rstrip(b"\0") for i in range(6)]
    assert fields == [b"Linux", b"web", os.uname().release.encode(), b"#1 zentry sentry", b"x86_64", b"example"]
    info = emulate.SYSINFO.unpack(emulate.sysinfo_bytes(v))
    unit = info[-1]
    assert info[4] * unit == 64 << 20 and info[5] * unit <= 64 << 20
    # uptime: the host's for a process in the host's time namespace (see test_views for a container's)
    with open("/proc/uptime") as f:
        assert abs(info[0] - float(f.read().split()[0])) < 5
    assert emulate.boottime_offset(os.getpid()) == 0


def test_the_committed_doc_is_the_generated_one():
    assert docgen.DOC.read_text() == docgen.render()
