"""The sentry thread's own seccomp filter: an allowlist the thread loads on itself.

The sentry thread reads the memory of every container it serves and holds
their listeners, inside a sandbox actor that runs as root with every
capability. A bug in it that a container can drive (a handler fed hostile
arguments, the C loop) must not become a root shell on the host. So the
thread confines itself when it starts (``confine_thread``, first thing in
``Sentry._main``), before it receives any notification:

* the filter is an **allowlist**: what the loop, the handlers, the tap
  publisher and the fail-closed paths make, and nothing else. Anything else
  fails with EPERM (``ERRNO``, not a kill: a refused call in a rare path --
  a log line, a traceback -- raises OSError, which the loop's fail-closed
  handling already covers; a killed thread would leave its containers to
  ``_main``'s cleanup, which would itself no longer run);
* seccomp filters are per thread: it is loaded **without**
  ``SECCOMP_FILTER_FLAG_TSYNC``, so it binds the sentry thread and threads it
  would create, never the actor's main thread, which must go on forking
  container inits (a whole-process allowlist would be inherited by each);
* it drops every capability but those it uses (``KEEP_CAPS``: tracee memory
  and /proc files, signals to a failed container, its cgroup files): no
  CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_RAWIO (no mapping at page 0), ...
  Capabilities are per thread too; the main thread keeps what forking inits
  needs;
* ``PR_SET_NO_NEW_PRIVS`` is set on the same thread, before the filter. It too is per
  thread (``task->atomic_flags``), so it does not reach the main thread or
  the inits it forks; the sentry thread never execs (``execve`` is not
  allowed), so it costs nothing, and the filter then loads without
  CAP_SYS_ADMIN (a sentry in an unprivileged test process confines itself
  the same way).

Refused by not being listed (what a compromised sentry must never do):
``execve``/``execveat``, ``fork``/``vfork``, ``clone`` with anything but a
new thread (namespace flags included), ``unshare``/``setns``, ``ptrace``,
the mount API, ``bpf``, ``kexec_*``, module loading, the keyrings,
``seccomp`` itself (no further filter, no second listener), ``prctl``,
``capset`` and every credential change, ``pidfd_getfd``, ``memfd_create``,
``socket``/``connect``/``bind``. Threads the sentry starts inherit the filter (the
tap publisher's event flusher, ``bus/events.py``, is started by the first
strace event on this thread; it only sends on ZeroMQ sockets, which the list
allows). ``ioctl`` is allowed only with the request
numbers the loop uses. ``process_vm_writev`` stays: writing the answer into
the tracee's buffer is how ``uname`` and ``sysinfo`` are emulated (in Python
and in ``_fast.c``); the seccomp API has no other way.

The program is compiled by the project's one BPF compiler
(``filter.compile_policy``, libseccomp) on the thread that calls
``Sentry.start`` -- libseccomp allocates and opens a memfd, which the
confined thread may not -- and only loaded by the sentry thread.
"""

from __future__ import annotations

import errno as E

from .abi import libc
from .abi.libseccomp import pyseccomp
from .abi.seccomp import (
    SECCOMP_IOCTL_NOTIF_ADDFD,
    SECCOMP_IOCTL_NOTIF_ID_VALID,
    SECCOMP_IOCTL_NOTIF_RECV,
    SECCOMP_IOCTL_NOTIF_SEND,
    SECCOMP_IOCTL_NOTIF_SET_FLAGS,
)
from .abi.syscalls import SYSCALLS
from .filter import Cond, LoadedProgram, Policy, Rule, compile_policy
from .table import CLONE_NS_FLAGS

#: syscall -> why the sentry thread makes it (docs/syscalls.md lists these)
ALLOWED: dict[str, str] = {}


def _allow(names: str, why: str) -> None:
    for n in names.split():
        assert n not in ALLOWED, f"{n} listed twice"
        ALLOWED[n] = why


_allow("poll ppoll read write close", "the loop: poll the listeners and the wake pipe, drain the pipe, close a listener")
_allow("process_vm_readv process_vm_writev", "tracee memory: read the arguments, write emulated results (uname, sysinfo)")
_allow("pidfd_open pidfd_send_signal kill", "tracee thread pidfds; fail closed: SIGKILL a container whose listener failed")
_allow("sysinfo", "emulate.sysinfo: the host's figures, clamped to the container's")
_allow("openat newfstatat fstat lseek getdents64 fcntl",
       "read /proc (a time namespace's offsets) and write a failed container's cgroup.kill; log lines")
_allow("mmap munmap mremap mprotect madvise brk", "the Python runtime's memory")
_allow("futex sched_yield getpid gettid clock_gettime clock_nanosleep getrandom",
       "the Python runtime: the GIL, time, hashing")
_allow("rt_sigprocmask rt_sigreturn restart_syscall",
       "signal delivery to the thread; the kernel resumes an interrupted poll with restart_syscall (seen here: "
       "without it the loop died with EPERM)")
_allow("sendto recvfrom sendmsg recvmsg getsockopt eventfd2",
       "the tap publisher (a ZeroMQ socket created and used on this thread) and its mailbox")
_allow("exit exit_group", "the thread ends (stop)")
_allow("rseq set_robust_list",
       "a thread the sentry starts registers itself: the tap's event flusher, started by the first strace event, "
       "runs under this filter too")

#: the only ioctl requests the thread makes: the listener's and a thread pidfd's
IOCTLS = {
    "SECCOMP_IOCTL_NOTIF_RECV": SECCOMP_IOCTL_NOTIF_RECV,
    "SECCOMP_IOCTL_NOTIF_SEND": SECCOMP_IOCTL_NOTIF_SEND,
    "SECCOMP_IOCTL_NOTIF_ID_VALID": SECCOMP_IOCTL_NOTIF_ID_VALID,
    "SECCOMP_IOCTL_NOTIF_ID_VALID (the _IOWR number, kernel 5.17+)": 0xC0082102,
    "SECCOMP_IOCTL_NOTIF_ADDFD": SECCOMP_IOCTL_NOTIF_ADDFD,
    "SECCOMP_IOCTL_NOTIF_SET_FLAGS": SECCOMP_IOCTL_NOTIF_SET_FLAGS,
    "PIDFD_GET_INFO": 0xC040FF0B,
    "TCGETS (isatty, when Python opens a file)": 0x5401,
}

#: the capabilities the thread keeps (<linux/capability.h> numbers); every other one it drops
KEEP_CAPS = {
    "CAP_DAC_OVERRIDE": 1,  # write a failed container's cgroup files and the log whoever owns them
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_KILL": 5,  # SIGKILL a container whose listener failed (its processes' uids are not ours)
    "CAP_SYS_PTRACE": 19,  # process_vm_readv/writev and /proc/PID/timens_offsets of any container's process
}
_KEEP_MASK = sum(1 << n for n in KEEP_CAPS.values())

#: clone(2) flags: a new thread, never a process or a namespace
CLONE_THREAD = 0x00010000
_CLONE_MASK = CLONE_THREAD | sum(CLONE_NS_FLAGS.values())


def policy() -> Policy:
    """The allowlist as a ``filter.Policy``: default ERRNO(EPERM), flags 0 (no TSYNC, no listener)."""
    by_name = {name: nr for nr, name in SYSCALLS.items()}
    rules = [Rule(by_name[name], pyseccomp.ALLOW) for name in ALLOWED]
    # ioctl: one rule per request (libseccomp ORs the rules of a syscall); the kernel reads the low 32 bits
    rules += [Rule(by_name["ioctl"], pyseccomp.ALLOW, (Cond(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, req),)) for req in IOCTLS.values()]
    # a thread, nothing else: CLONE_THREAD set and no namespace flag
    rules.append(Rule(by_name["clone"], pyseccomp.ALLOW, (Cond(0, pyseccomp.MASKED_EQ, _CLONE_MASK, CLONE_THREAD),)))
    # clone_args is in memory, where BPF cannot look: ENOSYS makes glibc fall back to clone
    rules.append(Rule(by_name["clone3"], pyseccomp.ERRNO(E.ENOSYS)))
    return Policy(default=pyseccomp.ERRNO(E.EPERM), rules=rules, flags=0)


_program: LoadedProgram | None = None


def program() -> LoadedProgram:
    """The compiled filter, ready to load (compiled once per process: the policy is static)."""
    global _program
    if _program is None:
        _program = LoadedProgram(compile_policy(policy()))
    return _program


def confine_thread(prog: LoadedProgram) -> None:
    """Confine the calling thread (only it, and threads it creates): drop every
    capability but ``KEEP_CAPS``, set no_new_privs, then load the filter.

    All three are per thread. After this the thread can change none of them
    (``capset``, ``prctl`` and ``seccomp`` are not allowed), so this is done
    once, at the thread's start.
    """
    effective, permitted, _inheritable = libc.thread_capget()
    libc.thread_capset(effective & _KEEP_MASK, permitted & _KEEP_MASK, 0)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    prog.load(0)
