"""Generates docs/syscalls.md from the syscall table: ``python -m zentry.sentry.docgen [--check]``."""

from __future__ import annotations

import argparse
import pathlib
import sys

from .table import TABLE, Action, SyscallTable

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "syscalls.md"

_HEADER = """# Syscalls under zentry (x86_64)

Generated from `sentry/table.py` by `python -m zentry.sentry.docgen`; do not edit.
`tests/unit/test_sentry_oci.py` fails when this file and the table disagree.

Every container process runs under two stacked seccomp filters: the OCI
profile of its config (if any) and zentry's, compiled from this table. The
kernel keeps the strictest verdict. Dispositions:

- **allow**: the kernel runs the call (decided in BPF, ~+0.1 µs);
- **trap**: the call is sent to the sentry (seccomp user notification) and
  answered by the named handler: `emulate.*` from the sentry's state, `fs.*`
  by serving a view or letting the kernel run it (below);
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

**Virtualized** (answered by the sentry, never run on the host):
`uname` (nodename and domainname from the container, release and machine
from the host, version `#1 zentry sentry`), `sysinfo` (RAM clamped to the
container's memory limit), and read-only opens of the views, rendered from
the container's own limits when opened:

| path | what it shows |
|---|---|
| `/proc/meminfo` | MemTotal = the memory limit, MemFree/MemAvailable within it, host page cache and swap as 0 |
| `/proc/cpuinfo` | one block per visible CPU: the cpuset cut to ceil(quota / period) |
| `/proc/stat` | the visible CPUs' lines, renumbered from 0, and their sum |
| `/sys/devices/system/cpu/online` | `0-N` for the visible CPUs (what glibc's `get_nprocs`, Python's `os.cpu_count()` and `nproc --all`-style readers use) |
| `/proc/uptime` | seconds since the container started; idle is the host's idle share of that |
| `/proc/loadavg` | the host's load averages, then `1/N` and the highest pid of the container's own pid namespace (never a host pid) |

A view is matched on the absolute path exactly as the program passes it (the
C fast path compares strings): `/proc/./meminfo`, or `meminfo` opened from a
cwd of `/proc`, get the kernel's file. Writes, `O_PATH`, `O_CREAT`, `O_TRUNC`
and `openat2` with resolve flags are never a view.

**Observed and continued**: every other `open`, `openat`, `openat2` and
`creat`. The sentry reads the path (to tell a view apart, and for the tap) and
answers `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel opens the file as the
container, with its credentials, capabilities, namespaces, device cgroup and
umask, exactly as without zentry (FIFOs block, `/proc/N/fd/M` and
`/dev/stdout` work, `O_TMPFILE` files can be linked, `openat2`'s resolve
flags are the kernel's). With strace on, the tap reports these calls with the
path **as read**, marked `continued` and without a result: a racing thread of
the container can make the logged path differ from the one the kernel opened,
and the result is the kernel's. This is safe because no decision rests on
that path (a racing thread gets the file it named, with its own rights; at
worst the host's `/proc/meminfo` instead of the view), and the sentry never
continues a call it refuses or changes.

**Refused**: in BPF, from the syscall number and register arguments only
(errno rows below); nothing is refused because of tracee memory.

### Why opens are trapped at all

Only the views need them: BPF cannot see a path. Measured on the 2-core
development host (`bench/syscalls.py`, `bench/workloads.py`): open+read+close
costs ~3 µs natively, ~12-16 µs trapped and continued by the C loop (the
trap's round trip is the floor), and the same as native under a filter that
allows opens in BPF. The alternative — bind-mounting files the sandbox keeps
current over `/proc/meminfo` and friends, as LXCFS does with FUSE, and
allowing opens in BPF — would run opens at native speed, but needs a live
file system (a periodic rewrite is stale or torn while read), must be set up
by the container init before the filter is loaded, and would take opens off
the tap for good: the filter cannot change after it is loaded, while strace
is switched at run time. The open-heavy busybox workloads of
`bench/workloads.py` stay above the 1.3x-runc target with trapping (see
`bench/README.md`), so the bind-mounted views are the next step for speed.

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
(allow most, refuse the dangerous), not gVisor's. gVisor's host allowlist is
the model for a filter on the sentry thread itself (not loaded yet): since the
sentry no longer opens files for containers, that thread needs no `openat2`,
`setfsuid`, `setfsgid`, `setgroups` nor `capset` — only poll, the listener
ioctls, `process_vm_readv`/`writev`, `pidfd_*`, `memfd_create` and the reads
of procfs its views need.

## Remaining differences from Linux

- The views (above) describe the container's limits, not the host; their load
  averages are the host's (the kernel keeps none per container) and
  `sched_getaffinity` is the kernel's (the cpuset, not cut to the CPU quota,
  as under runc).
- `/proc/uptime` counts from the container's start, but process start times
  (`/proc/PID/stat` field 22) still count from the host's boot: procps `ps`
  computes elapsed time and %CPU as uptime minus start time, which comes out
  negative (huge ELAPSED, %CPU 0.0). A time namespace with a boottime offset
  (OCI `linux.timeOffsets`, CLONE_NEWTIME) would shift both consistently in
  the kernel, without a view.
- `uname` reports version `#1 zentry sentry`.
- Refused syscalls fail with the errno of their row, as under Docker's profile.
- A trapped call costs a round trip to the sentry (~10 µs here) before the
  kernel runs it.

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
    return _HEADER.format(summary=summary, rows=rows, max_nr=max_nr)


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
