"""The syscall table: every x86_64 syscall -> its disposition, handler and note.

The shape follows gVisor's ``linux64.go``: one row per syscall number. A row's
``disposition`` says where the call is decided:

``ALLOW``   in BPF, the kernel runs it (cost +0.07 µs);
``TRAP``    in BPF -> USER_NOTIF -> the sentry runs ``handler`` (emulate, or refuse);
``TRACE``   ALLOW, except in the filter of a container created with strace on
            (``filter.install(trace=True)``), where it is a TRAP: the handler
            observes the call and answers CONTINUE (the open family);
``ERRNO``   in BPF, refused with ``errno`` without entering the kernel proper;
``KILL``    in BPF, the whole process is killed.

A row may carry ``when`` conditions: the disposition then applies only when
one of them matches the arguments, otherwise the call is allowed (that is how
``clone`` with namespace flags is refused while plain ``fork`` runs).
``filter.compile_policy`` turns this table into BPF; ``docgen`` into
``docs/syscalls.md``.
"""

from __future__ import annotations

import enum
import errno as E

from zentry.bus.value import Value

from .abi.syscalls import MAX_NR, SYSCALLS


class Action(enum.Enum):
    ALLOW = "allow"
    TRAP = "trap"
    #: allowed in BPF, trapped (and observed) only in containers created with strace on
    TRACE = "trace"
    ERRNO = "errno"
    KILL = "kill"


class ArgCond(Value):
    """``(args[index] & mask) == value``: one libseccomp MASKED_EQ comparison."""

    __slots__ = ("index", "mask", "value")

    def __init__(self, index: int, mask: int, value: int) -> None:
        self.index = index
        self.mask = mask
        self.value = value

    def __str__(self) -> str:
        return f"(arg{self.index} & {self.mask:#x}) == {self.value:#x}"


class Disposition(Value):
    """What happens to one syscall (see the module docstring).

    ``handler``: for TRAP, the handler name in ``handlers.HANDLERS``
    ("fs.openat"); ``errno``: for ERRNO, the errno the call fails with;
    ``when``: the disposition applies only when one of these matches
    (empty: always); ``note``: why.
    """

    __slots__ = ("action", "handler", "errno", "when", "note")

    def __init__(self, *, action: Action, handler: str | None = None, errno: int = 0, when: tuple[ArgCond, ...] = (), note: str = "") -> None:
        self.action = action
        self.handler = handler
        self.errno = errno
        self.when = when
        self.note = note

    def describe(self) -> str:
        if self.action is Action.TRAP:
            text = f"trap → `{self.handler}`"
        elif self.action is Action.TRACE:
            text = f"allow; with strace at create: trap → `{self.handler}`"
        elif self.action is Action.ERRNO:
            text = f"errno {E.errorcode.get(self.errno, self.errno)}"
        else:
            text = self.action.value
        if len(self.when) > 8:
            text += f" if arg{self.when[0].index} matches one of {len(self.when)} masked values (see the note), else allow"
        elif self.when:
            text += " if " + " or ".join(str(c) for c in self.when) + ", else allow"
        return text


def ALLOW(note: str = "") -> Disposition:
    return Disposition(action=Action.ALLOW, note=note)


def TRAP(handler: str, note: str = "", when: tuple[ArgCond, ...] = ()) -> Disposition:
    return Disposition(action=Action.TRAP, handler=handler, note=note, when=when)


def TRACE(handler: str, note: str = "") -> Disposition:
    return Disposition(action=Action.TRACE, handler=handler, note=note)


def ERRNO(err: int, note: str = "", when: tuple[ArgCond, ...] = ()) -> Disposition:
    return Disposition(action=Action.ERRNO, errno=err, note=note, when=when)


def KILL(note: str = "") -> Disposition:
    return Disposition(action=Action.KILL, note=note)


# clone(2)'s namespace flags (<linux/sched.h>). CLONE_NEWTIME (0x80) is left
# out: in clone(2) the low byte is the exit signal; only clone3/unshare take it.
CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

_RULES: dict[str, Disposition] = {}


def _rule(names: str, disposition: Disposition) -> None:
    for n in names.split():
        assert n not in _RULES, f"{n} listed twice"
        _RULES[n] = disposition


# --- the kernel opens as the container; observed only for strace -----------------------
_OPEN_NOTE = ("the kernel opens the file as the container (its credentials, capabilities, namespaces, device "
              "cgroup and umask); the views (/proc/{meminfo,cpuinfo,stat,loadavg}, "
              "/sys/devices/system/cpu/online) are files of a FUSE filesystem the sandbox serves, bound over "
              "those paths in the container's mount namespace. Trapped only when the container was created with "
              "strace on: the path is read for the tap and the call answered CONTINUE")
_rule("open", TRACE("fs.open", _OPEN_NOTE))
_rule("openat", TRACE("fs.openat", _OPEN_NOTE))
_rule("openat2", TRACE("fs.openat2", _OPEN_NOTE))
_rule("creat", TRACE("fs.creat", "open(path, O_CREAT|O_WRONLY|O_TRUNC, mode): as open"))

# --- emulated: answered from sentry state ----------------------------------------
_rule("uname", TRAP("emulate.uname", "nodename/domainname from the container, release from the host, version names zentry"))
_rule("sysinfo", TRAP("emulate.sysinfo", "totalram/freeram clamped to the container's memory limit; uptime that of its time namespace"))

# --- refused in BPF -----------------------------------------------------------------
_rule("init_module finit_module delete_module", ERRNO(E.EPERM, "loading kernel code"))
_rule("create_module get_kernel_syms query_module", ERRNO(E.ENOSYS, "removed from Linux long ago"))
_rule("kexec_load kexec_file_load", ERRNO(E.EPERM, "replaces the host kernel"))
_rule("bpf", ERRNO(E.EPERM, "kernel programs and maps: large attack surface"))
_rule("perf_event_open", ERRNO(E.EPERM, "kernel/hardware side channels, frequent CVEs"))
_rule("ptrace", ERRNO(E.EPERM, "would bypass the seccomp filter of the traced process"))
_rule("process_vm_readv process_vm_writev", ERRNO(E.EPERM, "cross-process memory access"))
_rule("process_madvise pidfd_getfd kcmp", ERRNO(E.EPERM, "ptrace-like access to another process"))
_rule("keyctl add_key request_key", ERRNO(E.EPERM, "the kernel keyring is not namespaced"))
_rule("open_by_handle_at name_to_handle_at", ERRNO(E.EPERM, "file handles bypass path resolution (the 'shocker' escape)"))
_rule("userfaultfd", ERRNO(E.EPERM, "widens kernel race windows"))
_rule("io_uring_setup io_uring_enter io_uring_register", ERRNO(E.EPERM, "io_uring operations bypass seccomp (an openat via io_uring would reach neither the filter nor the tap)"))
_rule(
    "mount umount2 pivot_root move_mount open_tree open_tree_attr fsopen fsconfig fsmount fspick mount_setattr",
    ERRNO(E.EPERM, "the mount table is set up by zentry before the filter is loaded"),
)
_rule("reboot", ERRNO(E.EPERM, "host power state"))
_rule("swapon swapoff", ERRNO(E.EPERM, "host swap"))
_rule("settimeofday clock_settime adjtimex clock_adjtime", ERRNO(E.EPERM, "the host clock is not namespaced"))
_rule("acct", ERRNO(E.EPERM, "host process accounting"))
_rule("syslog", ERRNO(E.EPERM, "the host kernel log"))
_rule("iopl ioperm", ERRNO(E.EPERM, "raw I/O port access"))
_rule("quotactl quotactl_fd", ERRNO(E.EPERM, "host filesystem quotas"))
_rule("lookup_dcookie", ERRNO(E.EPERM, "profiling interface, leaks host paths"))
_rule("fanotify_init", ERRNO(E.EPERM, "host-wide filesystem monitoring"))
_rule("vhangup", ERRNO(E.EPERM, "hangs up the controlling terminal"))
_rule("uselib", ERRNO(E.EPERM, "obsolete a.out loader"))
_rule("_sysctl", ERRNO(E.EPERM, "obsolete, host kernel tunables"))
_rule("nfsservctl afs_syscall tuxcall security vserver getpmsg putpmsg epoll_ctl_old epoll_wait_old", ERRNO(E.ENOSYS, "not implemented by Linux"))
_rule("modify_ldt", ERRNO(E.EPERM, "16-bit segments: a history of kernel bugs, unused by 64-bit programs"))
_rule("setns", ERRNO(E.EPERM, "namespaces are set up by zentry; joining another would leave the sandbox"))
_rule("unshare", ERRNO(E.EPERM, "new namespaces are set up by zentry only (kept simple: every unshare is refused)"))
_rule("clone3", ERRNO(E.ENOSYS, "clone_args is in memory, BPF cannot check its flags: ENOSYS makes glibc fall back to clone"))
_rule(
    "clone",
    ERRNO(
        E.EPERM,
        "plain fork/thread creation runs; namespace flags are refused",
        when=tuple(ArgCond(0, bit, bit) for bit in CLONE_NS_FLAGS.values()),
    ),
)
_rule(
    "ioctl",
    ERRNO(
        E.EPERM,
        "TIOCSTI/TIOCLINUX push input into the terminal of another session; other ioctls run",
        when=(ArgCond(1, 0xFFFFFFFF, TIOCSTI), ArgCond(1, 0xFFFFFFFF, TIOCLINUX)),
    ),
)
_rule("migrate_pages move_pages", ERRNO(E.EPERM, "moves another process's pages between NUMA nodes"))
_rule("ustat sysfs", ERRNO(E.EPERM, "obsolete (Docker's default profile refuses them too)"))
#: the personality values Docker's default profile allows: PER_LINUX, PER_LINUX32,
#: UNAME26 and both, and 0xffffffff (query). libseccomp takes one comparison per
#: argument in a rule, so the refusals are: another bit set while bit 31 is clear
#: (no flag uses bit 31), or bit 31 set while another bit is clear (not the query).
_PERSONALITY_OK_BITS = 0x0008 | 0x20000
_BIT31 = 1 << 31
_PERSONALITY_REFUSED = tuple(ArgCond(0, (1 << b) | _BIT31, 1 << b) for b in range(31) if not _PERSONALITY_OK_BITS & (1 << b)) + tuple(
    ArgCond(0, (1 << b) | _BIT31, _BIT31) for b in range(31)
)
_rule(
    "personality",
    ERRNO(
        E.EPERM,
        "only PER_LINUX, PER_LINUX32, UNAME26 and the query 0xffffffff, as Docker's default profile: "
        "READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and the other flags weaken the process's own protections",
        when=_PERSONALITY_REFUSED,
    ),
)
AF_VSOCK = 40
_rule(
    "socket",
    ERRNO(
        E.EPERM,
        "AF_VSOCK reaches the hypervisor and other VMs, outside the network namespace (as Docker's default profile); other families run",
        when=(ArgCond(0, 0xFFFFFFFF, AF_VSOCK),),
    ),
)

# --- allowed, with a note where the choice is not obvious --------------------------------
for _n in "setuid setgid setgroups setreuid setregid setresuid setresgid setfsuid setfsgid capset prctl".split():
    _RULES[_n] = ALLOW("runs in BPF so the container init can drop privileges after the filter is loaded")
for _n in "execve execveat".split():
    _RULES[_n] = ALLOW("the kernel resolves the executable inside the tracee's own root; filter and listener are inherited")
for _n in "fork vfork".split():
    _RULES[_n] = ALLOW("no namespace flags possible")
_RULES["seccomp"] = ALLOW("a further filter can only restrict; a second listener is refused by the kernel (EBUSY)")
_RULES["chroot"] = ALLOW("needs CAP_SYS_CHROOT, which the kernel checks (Docker allows it with that capability); inside a chroot, /proc and the views are whatever that root holds")
for _n in "sethostname setdomainname".split():
    _RULES[_n] = ALLOW("acts on the container's UTS namespace and needs CAP_SYS_ADMIN there, which the kernel checks (Docker gates it on the same capability); uname keeps answering from the container's config")
for _n in "mbind set_mempolicy get_mempolicy set_mempolicy_home_node".split():
    _RULES[_n] = ALLOW("the caller's own NUMA memory policy; moving other processes' pages (MPOL_MF_MOVE_ALL) needs CAP_SYS_NICE, which the kernel checks (Docker gates the call on that capability)")
for _n in ("cachestat fchmodat2 futex_wake futex_wait futex_requeue map_shadow_stack mseal statmount listmount "
           "lsm_get_self_attr lsm_set_self_attr lsm_list_modules setxattrat getxattrat listxattrat removexattrat "
           "file_getattr file_setattr uretprobe").split():
    _RULES[_n] = ALLOW("newer than the Docker default profile compared (2023); acts on the caller's own files, memory, futexes, "
                       "mounts or LSM attributes with the kernel's usual checks")

_DEFAULT_NOTE = "harmless: runs in the kernel"


class SyscallRow(Value):
    __slots__ = ("nr", "name", "disposition")

    def __init__(self, nr: int, name: str, disposition: Disposition) -> None:
        self.nr = nr
        self.name = name
        self.disposition = disposition


class SyscallTable(Value):
    """number -> row, for every assigned x86_64 syscall."""

    __slots__ = ("rows",)

    def __init__(self, rows: dict[int, SyscallRow] | None = None) -> None:
        self.rows = {} if rows is None else rows

    def __getitem__(self, key: int | str) -> SyscallRow:
        if isinstance(key, str):
            for row in self.rows.values():
                if row.name == key:
                    return row
            raise KeyError(key)
        return self.rows[key]

    def __iter__(self):
        return iter(self.rows[nr] for nr in sorted(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def trapped(self) -> dict[int, str]:
        """nr -> handler name, for every row the filter may trap (TRAP, and TRACE under strace)."""
        return {r.nr: r.disposition.handler for r in self if r.disposition.action in (Action.TRAP, Action.TRACE)}

    def by_action(self, action: Action) -> list[SyscallRow]:
        return [r for r in self if r.disposition.action is action]


def default_table() -> SyscallTable:
    """zentry's default policy (the issue "The sentry: a seccomp-trap syscall kernel")."""
    unknown = set(_RULES) - set(SYSCALLS.values())
    assert not unknown, f"rules for unknown syscalls: {unknown}"
    rows = {}
    for nr in range(MAX_NR + 1):
        name = SYSCALLS.get(nr)
        if name is None:
            continue
        rows[nr] = SyscallRow(nr, name, _RULES.get(name) or ALLOW(_DEFAULT_NOTE))
    return SyscallTable(rows)


#: the table used by ``filter.install`` and the sentry unless told otherwise
TABLE = default_table()
