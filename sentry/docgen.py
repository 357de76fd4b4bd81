"""Generates docs/syscalls.md from the syscall table: ``python -m zentry.sentry.docgen [--check]``."""

from __future__ import annotations

import argparse
import pathlib
import sys

from . import confine
from .table import TABLE, Action, SyscallTable

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "syscalls.md"

_HEADER = """# Syscalls under zentry (x86_64)

Generated from `sentry/table.py` and `sentry/confine.py` by `python -m zentry.sentry.docgen`; do not edit.
`tests/unit/test_sentry_oci.py` fails when this file and the table disagree.

Every container process runs under two stacked seccomp filters: the OCI
profile of its config (if any) and zentry's, compiled from this table. The
kernel keeps the strictest verdict. Dispositions:

- **allow**: the kernel runs the call (decided in BPF, ~+0.1 µs);
- **trap**: the call is sent to the sentry (seccomp user notification) and
  answered by the named handler: `emulate.*` from the sentry's state;
- **allow; with strace at create: trap**: the open family. Allowed in BPF,
  except in a container created with strace on (`zentry --strace
  create|run`, annotation `dev.zentry.strace`), where `fs.*` reads the path
  for the tap and lets the kernel run the call (below);
- **errno E**: refused in BPF with E; with a condition, only when it matches;
- **kill**: the process is killed.

Unassigned numbers (336–423) and numbers above {max_nr} are not in the table: the
filter lets them through to the kernel, which answers ENOSYS for numbers it
does not know. x32 (`nr | 0x40000000`) and every other architecture kill
the process.

## Summary

| disposition | syscalls |
|---|---|
{summary}

## What the sentry does with a trapped call

**Virtualized** (answered by the sentry, never run on the host): `uname`
(nodename and domainname from the container, release and machine from the
host, version `#1 zentry sentry`) and `sysinfo` (RAM clamped to the
container's memory limit).

**Observed and continued**, only in a container created with strace on:
`open`, `openat`, `openat2` and `creat`. The sentry reads the path for the
tap and answers `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel opens the file
as the container, with its credentials, capabilities, namespaces, device
cgroup and umask, exactly as without zentry. The tap reports these calls
with the path **as read**, marked `continued` and without a result: a racing
thread of the container can make the logged path differ from the one the
kernel opened, and the result is the kernel's. No decision rests on that
path, and the sentry never continues a call it refuses or changes.

Whether opens are trapped is fixed when the container's processes load the
filter (a loaded seccomp filter never changes): `zentry debug --strace on`
on a container created without strace shows its trapped calls (`uname`,
`sysinfo`) from then on, but never its opens, nor those of processes exec'd
into it later (they load the container's filter).

**Refused**: in BPF, from the syscall number and register arguments only
(errno rows below); nothing is refused because of tracee memory.

## The views: /proc and /sys as the container's limits see them

What programs size themselves from describes the host inside a container.
zentry shows these files rendered from the container's own limits, read
afresh at every open:

| path | what it shows |
|---|---|
| `/proc/meminfo` | MemTotal = the memory limit, MemFree/MemAvailable within it, host page cache and swap as 0 |
| `/proc/cpuinfo` | one block per visible CPU: the cpuset cut to ceil(quota / period) |
| `/proc/stat` | the visible CPUs' lines, renumbered from 0, and their sum |
| `/sys/devices/system/cpu/online` | `0-N` for the visible CPUs (what glibc's `get_nprocs`, Python's `os.cpu_count()` and `nproc --all`-style readers use) |
| `/proc/loadavg` | the host's load averages, then `1/N` and the highest pid of the container's own pid namespace (never a host pid) |

They are files of a FUSE filesystem the sandbox serves (`sentry/views.py`),
as LXCFS serves its own: when the container init is ready, a helper forked
from the sandbox joins the container's mount namespace, mounts the
filesystem detached (the new mount API: no directory is needed, even on a
read-only root) and binds each file read-only, nosuid, nodev, noexec over its
path. Nothing is mounted on the host; exec'd processes join the container's
mount namespace and see the same files; when the namespace goes, the kernel
ends the connection. If the sandbox dies, reads fail (ENOTCONN) rather than
show the host's values (and the container dies with its sandbox anyway).
The kernel opens these files like any other (no open is trapped), so every
path form reaches them (`/proc/./meminfo`, `meminfo` from a cwd of `/proc`).

### Why opens are not trapped

Only the views needed them, and a trapped open costs a round trip to the
sentry however little it does. Measured on the 2-core development host
(`bench/syscalls.py`, `bench/workloads.py`, figures in `bench/README.md`):
open+read+close costs ~4 µs natively, the same under zentry's filter (opens
allowed in BPF), and 3-6x that trapped and continued by the C loop; the
open-heavy busybox workloads ran 1.4-4x runc with opens trapped, within
1.3x with the views as a filesystem. The price: opening a view goes through
the FUSE server (a few hundred µs, rendered in Python), and opens are on the
tap only for containers created with strace on.

## Compared with Docker's default seccomp profile and gVisor

Everything Docker's default profile refuses (for a container with Docker's
default capabilities) is refused here too, or its row's note says why not:
Docker gates `sethostname`, `setdomainname`, `chroot`, `mbind` and
`set_mempolicy` on a capability the kernel checks again itself; syscalls
newer than the profile compared are noted as such. Argument conditions follow
Docker's: `clone` with namespace flags, `personality` outside PER_LINUX,
PER_LINUX32, UNAME26 and the query, `socket(AF_VSOCK)`. Stricter than Docker:
`ptrace`, `process_vm_*`, `kcmp`, `pidfd_getfd`, `process_madvise`,
`io_uring_*`, `userfaultfd`, `name_to_handle_at`, every `unshare`/`setns` and
the mount API whatever the capabilities. gVisor runs its own kernel and lets
its Sentry make only a small allowlist of host syscalls; zentry's container
processes talk to the host kernel directly, so its surface is Docker's shape
(allow most, refuse the dangerous), not gVisor's. The sentry thread itself
is confined the gVisor way, by an allowlist (next section).

## The sentry thread's own filter

The sentry thread reads every served container's memory inside a sandbox
actor that runs as root, so it confines itself when it starts, before it
receives a notification (`sentry/confine.py`): it drops every capability
but {kept}, sets `PR_SET_NO_NEW_PRIVS`, then loads a seccomp filter
**without** `SECCOMP_FILTER_FLAG_TSYNC`. All three are per thread in Linux:
they bind the sentry thread (and any thread it would create), never the
actor's main thread, which forks container inits; a whole-process allowlist
would be inherited by every container. The filter is
an allowlist compiled by the same compiler as the table above; anything not
listed fails with EPERM: `execve`/`execveat`, `fork`/`vfork`, `clone` for
anything but a thread (namespace flags included), `unshare`/`setns`,
`ptrace`, the mount API, `bpf`, `kexec_*`, module loading, the keyrings,
`seccomp` (no further filter, no new listener), `prctl`, `capset` and every
credential change, `pidfd_getfd`, `memfd_create`, `socket`. The views are
served by another thread (FUSE) and are not under this filter.
`process_vm_writev` stays allowed: writing into the tracee's buffer is how
`uname` and `sysinfo` are emulated. What a compromised sentry thread could
still do: read and write the memory of processes root may trace, signal
them, and open files as root (`openat` serves its /proc reads, a failed
container's `cgroup.kill` and the log); seccomp cannot look at paths.

| syscalls | why the sentry thread makes them |
|---|---|
{sentry_rows}

## Remaining differences from Linux

- The views (above) describe the container's limits, not the host; their load
  averages are the host's (the kernel keeps none per container) and
  `sched_getaffinity` is the kernel's (the cpuset, not cut to the CPU quota,
  as under runc).
- Uptime needs no view: unless its config has a time namespace of its own,
  a container gets one whose boot clock starts with it (the intermediate
  unshares it just before forking the init; exec'd processes join it), so
  `/proc/uptime`, `sysinfo` and the start times of `/proc/PID/stat` all count
  from the container's start, consistently: procps `ps` elapsed times and
  %CPU are right. CLOCK_MONOTONIC is the host's; under runc all three count
  from the host's boot.
- A view's size is that of the content the caller's open gets (procfs
  reports 0), so that `sendfile`/`splice` readers (busybox `cat`) see it all;
  two processes reading one view at the same instant share the kernel's page
  cache of it and may see parts of each other's rendering.
- `uname` reports version `#1 zentry sentry`.
- Refused syscalls fail with the errno of their row, as under Docker's profile.
- A trapped call (`uname`, `sysinfo`; opens under strace) costs a round trip
  to the sentry (~10 µs here).

## Table

| nr | name | disposition | note |
|---:|---|---|---|
{rows}
"""


def render(table: SyscallTable = TABLE) -> str:
    counts = {a: 0 for a in Action}
    for row in table:
        counts[row.disposition.action] += 1
    summary = "\n".join(
        f"| {a.value} | {counts[a]}: " + ", ".join(f"`{r.name}`" for r in table.by_action(a)) + " |"
        if a is not Action.ALLOW
        else f"| {a.value} | {counts[a]} (everything else) |"
        for a in Action
    )
    rows = "\n".join(f"| {r.nr} | `{r.name}` | {r.disposition.describe()} | {r.disposition.note} |" for r in table)
    max_nr = max(r.nr for r in table)
    return _HEADER.format(summary=summary, rows=rows, max_nr=max_nr, sentry_rows=sentry_rows(),
                          kept=", ".join(f"`{name}`" for name in confine.KEEP_CAPS))


def sentry_rows() -> str:
    """The sentry thread's allowlist (``confine``) as table rows."""
    groups: dict[str, list[str]] = {}
    for name, why in confine.ALLOWED.items():
        groups.setdefault(why, []).append(name)
    rows = [f"| {', '.join(f'`{n}`' for n in names)} | {why} |" for why, names in groups.items()]
    rows.append("| `ioctl` | only " + ", ".join(f"{name} (`{req:#x}`)" for name, req in confine.IOCTLS.items()) + " |")
    rows.append("| `clone` | a new thread only: `CLONE_THREAD` set and no namespace flag |")
    rows.append("| `clone3` | refused with ENOSYS (its flags are in memory, out of BPF's reach): glibc falls back to `clone` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/syscalls.md is out of date")
    ap.add_argument("--output", type=pathlib.Path, default=DOC)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m zentry.sentry.docgen", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
