"""Generates docs/syscalls.md from the syscall table: ``python -m zentry.sentry.docgen [--check]``."""

from __future__ import annotations

import argparse
import pathlib
import sys

from .table import TABLE, Action, SyscallTable

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "syscalls.md"

_HEADER = """# Syscalls under zentry (x86_64)

Generated from `sentry/table.py` by `python -m zentry.sentry.docgen`; do not edit.
`tests/unit/test_sentry_docgen.py` fails when this file and the table disagree.

Every container process runs under two stacked seccomp filters: the OCI
profile of its config (if any) and zentry's, compiled from this table. The
kernel keeps the strictest verdict. Dispositions:

- **allow**: the kernel runs the call (decided in BPF, ~+0.1 µs);
- **trap**: the call is sent to the sentry (seccomp user notification) and
  answered by the named handler: `emulate.*` from the sentry's state,
  `fs.*` by doing it for the tracee (mediation);
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

## Known differences of mediated opens

- A created file's mode is masked by the sentry's umask as well as the
  tracee's; O_NOCTTY is always set (the sentry must never acquire a terminal).
- FIFOs: the sentry opens non-blocking so that no open can stall it. A
  blocking open of a FIFO waits for its other end in a waiter thread
  (`sentry/handlers/fifo.py`) and is answered then; a reader returns when
  data or the writer's close arrives rather than when the writer opens, and
  non-fatal signals wait for the answer (the trapped thread waits killably).
- Magic links (`/proc/N/fd/M`, `/proc/N/root`, …) are not followed (ELOOP),
  except the tracee's own: `/proc/self/fd/N`, `/dev/fd/N`,
  `/dev/std{{in,out,err}}` and `/proc/self/exe` re-open its own file as the
  kernel does, `/proc/self/root/X` and `/proc/self/cwd/X` are X from its root
  and cwd. `/proc/mounts` and `/proc/net` (links into `self`) are its own.
- O_PATH: `open`/`openat` with O_PATH run in the kernel (decided in BPF from
  the flags register); through `openat2` they fail with EBADF (`open_how` is
  in tracee memory, and ADDFD cannot install an O_PATH file).
- Mediated opens are made with the tracee's fsuid, fsgid and groups; a root
  tracee keeps only the DAC capabilities it holds itself, and none when it is
  in another user namespace (there they would be under-granted: a mapped root
  cannot override permissions on files of its own mapped users).

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
