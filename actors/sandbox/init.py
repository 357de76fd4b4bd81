"""The container init and the intermediate that forks it, both descendants of ``create``.

``create`` (or ``run``) forks a single-threaded blank before it builds any
ZeroMQ context (launch.Prefork); once assigned its container, that blank is
the *intermediate* (``intermediate_main``): it connects to the sandbox's fd
socket, gets the root the gofer prepared, enters the user namespace if any,
joins or creates the PID namespace and forks the init, tells the sandbox the
init's pid and exits. ``create`` is a child subreaper, so the init is
re-parented to it, and to the engine's subreaper (conmon, the containerd
shim) once ``create`` exits: the pid engines see is the container's own.

The init keeps the connection to the sandbox (``chan``, a SOCK_SEQPACKET
stream accepted on ``fds.sock``) and, each step on the far side of a
handshake with it:

1. wait for ``go`` (the sandbox has put us in the container's cgroup);
2. join or create namespaces; join a *copy* of the gofer's mount namespace
   (the root the gofer prepared), make every ``mounts`` entry in the order
   listed and the devices (bind sources cloned with the host's rights),
   pivot into it;
3. in runc's order: the terminal (and /dev/console), hostname, sysctls
   (before /proc/sys turns read-only), the cwd, then the lock-down (read-only
   and masked paths, read-only root); rlimits, oom score, HOME; resolve
   the executable (a missing one is reported now, at create, as runc does);
4. drop to the process's user and capabilities, no_new_privs;
5. load the sentry's seccomp filter and hand its listener to the sandbox;
6. say ``ready``; wait for ``start``; execve (``chan`` is close-on-exec: EOF
   tells the sandbox the execve happened).

Any failure is sent as ``error <code> <message>`` and the process exits. A
sandbox that goes away during setup closes ``chan``: the init gives up.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import stat
import sys
import termios

from zentry.actors.controller import hooks
from zentry.actors.sandbox import caps
from zentry.bus import fdpass
from zentry.bus.errors import ConfigError, ExecNotFound, ExecPermission, SystemFailure, ZentryError, to_wire
from zentry.actors.gofer import devices
from zentry.actors.gofer import rootfs as rootfs_mod
from zentry.actors.oci import PRESERVE_FDS_ANNOTATION, SPAWNER_ANNOTATION, STRACE_ANNOTATION
from zentry.actors.oci.config import sysctl_path
from zentry.sentry import filter as sentry_filter
from zentry.sentry.abi import libc

#: <linux/prctl.h>
PR_SET_DUMPABLE = 4

RLIMITS = {
    name: getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_") and isinstance(getattr(resource, name), int)
}


def send_line(chan: socket.socket, line: str) -> None:
    chan.send(line.encode())


def fail(chan: socket.socket, exc: BaseException) -> None:
    code, message = to_wire(exc)
    try:
        send_line(chan, f"error {code} {' '.join(message.split())}")
    except OSError:
        pass


def find_executable(name: str, env: list[str], cwd: str) -> str:
    """The path execve will run, or the error engines turn into 126/127."""
    if "/" in name:
        path = name if name.startswith("/") else os.path.join(cwd, name)
        _check_exec(path, name)
        return path
    path_var = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    denied = None
    for d in path_var.split(":"):
        candidate = os.path.join(d or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = candidate
    if denied:
        raise ExecPermission(f'exec: "{name}": permission denied')
    raise ExecNotFound(f'exec: "{name}": executable file not found in $PATH')


def _check_exec(path: str, name: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ExecNotFound(f'exec: "{name}": stat {path}: no such file or directory') from None
    if stat.S_ISDIR(st.st_mode) or not os.access(path, os.X_OK):
        raise ExecPermission(f'exec: "{name}": permission denied')


def join_namespace(kind: str, path: str, flag: int) -> None:
    """setns into the ``kind`` namespace at ``path``; ConfigError if it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"cannot open {kind} namespace {path!r}: {err.strerror}") from err
    try:
        libc.setns(fd, flag)
    except OSError as err:
        raise SystemFailure(f"cannot join {kind} namespace {path!r}: {err.strerror}") from err
    finally:
        os.close(fd)


def join_namespaces(config: dict, *, skip: set[str]) -> None:
    """setns into namespaces given by path, unshare the new ones (except ``skip``)."""
    flags = 0
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        kind = ns["type"]
        if kind in skip:
            continue
        flag, _name = libc.NAMESPACES[kind]
        if ns.get("path"):
            join_namespace(kind, ns["path"], flag)
        else:
            flags |= flag
    if flags:
        libc.unshare(flags)
    if flags & libc.CLONE_NEWNET:
        loopback_up()


#: <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in a new network namespace, as runc does: a container
    without networking still has localhost (127.0.0.1 and ::1 come with it)."""
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        ifreq = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def join_gofer_mounts(gofer_pid: int) -> None:
    """setns into the gofer's mount namespace (where the container's root was built)."""
    mntns = os.open(f"/proc/{gofer_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(mntns, libc.CLONE_NEWNS)
    finally:
        os.close(mntns)


def enter_user_namespace(chan: socket.socket, config: dict, gofer_pid: int, rootfs: str) -> None:
    """Run by the intermediate, before the pid namespace: join or create the user namespace.

    Order matters: the gofer's mount namespace belongs to the initial user
    namespace, so it is joined first, while we are still privileged there;
    the init unshares its copy later, from inside (the copy is then owned by
    the container's user namespace, its mounts locked). A new namespace gets
    its mappings from the sandbox, privileged and outside, while we wait on
    ``chan``. Then we become the namespace's root, so the pid namespace and
    every namespace the init creates belong to it, and files it creates are
    owned by the mapped root. We also step into the container's root while
    its path is still searchable (see ``rootfs.enter_rootfs``), clone the
    bind sources and make the mount points in the bundle's rootfs while we
    have the host's rights (``rootfs.keep_bind_sources``), and import what
    the hooks need while the host's Python files are still readable.
    """
    ns = next(ns for ns in config["linux"]["namespaces"] if ns["type"] == "user")
    _import_for_hooks(config)
    join_gofer_mounts(gofer_pid)
    # bind sources, with the host's rights (the container's root may not reach
    # them); load_bundle made relative ones absolute
    rootfs_mod.keep_bind_sources(config, "", rootfs)
    os.chdir(rootfs)
    if ns.get("path"):
        join_namespace("user", ns["path"], libc.CLONE_NEWUSER)
    else:
        libc.unshare(libc.CLONE_NEWUSER)
        send_line(chan, "userns")
        if chan.recv(16) != b"mapped":
            raise SystemFailure("the sandbox did not write the user namespace's mappings")
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as err:
        raise ConfigError(f"the container's root (uid 0, gid 0) is not mapped in its user namespace: {err.strerror}") from err
    set_groups([])


def _import_for_hooks(config: dict) -> None:
    container_hooks = config.get("hooks") or {}
    if container_hooks.get("createContainer") or container_hooks.get("startContainer"):
        import sh  # noqa: F401  (the hooks run through it; no imports after the pivot)


def set_groups(gids: list[int]) -> None:
    """setgroups(2); an empty list is skipped where the user namespace denies setgroups."""
    try:
        os.setgroups(gids)
    except PermissionError:
        if gids or not _setgroups_denied():
            raise


def _setgroups_denied() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def apply_sysctls(sysctls: dict) -> None:
    """Write linux.sysctl (config.check_config has refused the host's own)."""
    for key, value in sysctls.items():
        try:
            with open(sysctl_path(key), "w") as f:
                f.write(str(value))
        except OSError as err:
            raise ConfigError(f"cannot set sysctl {key}={value}: {err.strerror}") from err


def apply_rlimits(process: dict) -> None:
    for rl in process.get("rlimits") or []:
        number = RLIMITS.get(rl["type"])
        if number is None:
            raise ConfigError(f"unknown rlimit {rl['type']!r}")
        try:
            resource.setrlimit(number, (rl["soft"], rl["hard"]))
        except (ValueError, OSError) as err:
            raise SystemFailure(f"cannot set {rl['type']} to {rl['soft']}:{rl['hard']}: {err}") from err


def apply_user(process: dict) -> None:
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    caps.drop_bounding(process.get("capabilities"))
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    set_groups([int(g) for g in user.get("additionalGids") or []])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if "umask" in user:
        os.umask(int(user["umask"]))
    caps.apply(process.get("capabilities"))
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)


def setup_terminal(console: socket.socket) -> str:
    """Open a pty in the container's devpts, send the master, make the slave our tty.

    Returns the slave's path (for /dev/console)."""
    master, slave = os.openpty()
    try:
        socket.send_fds(console, [b"/dev/ptmx"], [master])
    finally:
        os.close(master)
        console.close()
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    path = os.ttyname(slave)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    return path


def environment(process: dict) -> dict[str, str]:
    """process.env as execve's environment. Without a HOME (or with an empty one),
    HOME is the home of process.user.uid in the container's /etc/passwd, else "/",
    as with runc. Read inside the container's root."""
    envp: dict[str, str] = {}
    for e in process.get("env") or []:
        if "=" in e:
            k, _, v = e.partition("=")
            envp[k] = v
    if not envp.get("HOME"):
        envp["HOME"] = passwd_home(int((process.get("user") or {}).get("uid", 0))) or "/"
    return envp


def passwd_home(uid: int) -> str | None:
    """The home directory of ``uid`` in /etc/passwd, or None."""
    try:
        with open("/etc/passwd", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2].strip() == str(uid):
                    return fields[5] or None
    except OSError:
        pass
    return None


def preserved_fds(config: dict) -> int:
    value = str((config.get("annotations") or {}).get(PRESERVE_FDS_ANNOTATION) or "0")
    return int(value) if value.isdigit() else 0


def container_init(chan: socket.socket, config: dict, rootfs: str, gofer_pid: int, console_socket: str, state: dict) -> int:
    """Runs in the forked child; never returns on success (execve)."""
    try:
        for sig in range(1, signal.NSIG):
            if sig in (signal.SIGKILL, signal.SIGSTOP):
                continue
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        go = chan.recv(64).split()
        if not go or go[0] != b"go":
            return 1
        state = dict(state, pid=int(go[1]) if len(go) > 1 else 0)
        process = config.get("process") or {}
        linux = config.get("linux") or {}
        # Our cgroups, as the host names them: read before a cgroup namespace.
        cgroup_binds = rootfs_mod.cgroup_binds(config)

        console = None
        if process.get("terminal"):
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                console.connect(console_socket)
            except OSError as err:
                raise SystemFailure(f"cannot connect to console socket {console_socket!r}: {err.strerror}") from err

        # Namespaces: the pid namespace was made by the intermediate before
        # our fork; the mount namespace is a copy of the gofer's. With a user
        # namespace the intermediate already entered it (and the gofer's
        # mount namespace, which only the initial user namespace may join):
        # what we create now is owned by it.
        user_ns = any(ns["type"] == "user" for ns in linux.get("namespaces") or [])
        join_namespaces(config, skip={"mount", "pid", "user"})
        if not user_ns:
            join_gofer_mounts(gofer_pid)
        libc.unshare(libc.CLONE_NEWNS)
        mount_ns = next((ns for ns in linux.get("namespaces") or [] if ns["type"] == "mount"), None)
        if mount_ns is not None and mount_ns.get("path"):
            # as runc: the container's root is set up (and pivoted into) there
            rootfs_mod.carry_root_into(rootfs, mount_ns["path"])
        # Every mounts entry in the order listed, then the devices (with a
        # user namespace our cwd is the root: its path may not be searchable).
        rootfs_mod.mount_entries(config, state.get("bundle") or "", "." if user_ns else rootfs,
                                 rootfs_mod.take_bind_sources(), cgroup_binds)

        _import_for_hooks(config)
        # createContainer: in the container's namespaces, before pivot_root,
        # the hook's path resolved in the runtime's mount namespace.
        hooks.run_hooks("createContainer", config, state, abort_on_hangup=chan)

        rootfs_mod.enter_rootfs(rootfs, user_ns=user_ns)
        if user_ns:
            rootfs_mod.detach_old_root()
        rootfs_mod.finish_in_container(config)

        # runc's order: mounts, console, names, sysctls, the cwd, then the
        # lock-down (read-only /proc/sys and other paths, masks, read-only root).
        if console is not None:
            devices.bind_console(setup_terminal(console))
        if any(ns["type"] == "uts" and not ns.get("path") for ns in linux.get("namespaces") or []):
            if config.get("hostname"):
                libc.sethostname(config["hostname"])
            if config.get("domainname"):
                libc.setdomainname(config["domainname"])
        apply_sysctls(linux.get("sysctl") or {})
        cwd = process.get("cwd") or "/"
        rootfs_mod.make_cwd(cwd)
        rootfs_mod.lock_down(config)
        apply_rlimits(process)
        if "oomScoreAdj" in process:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(process["oomScoreAdj"]))

        os.chdir(cwd)
        envp = environment(process)
        env = [f"{k}={v}" for k, v in envp.items()]
        args = process.get("args") or []
        path = find_executable(args[0], env, cwd)
        # Nothing but stdio (and --preserve-fds' fds) reaches the container:
        # whatever its caller left open is closed at execve, as runc does.
        # Now, before the filters: an OCI profile may refuse close_range.
        libc.cloexec_from(3 + preserved_fds(config))

        # The filters go on while we are still privileged (no_new_privs is
        # not needed then); the listener is handed over at once, with no
        # trapped call in between (seccomp-notify pitfall 7). Dropping to
        # the user afterwards uses only calls the filter allows.
        if (config.get("annotations") or {}).get(SPAWNER_ANNOTATION) != "true":
            names = uts_names()
            listener = install_sentry(config, bool(process.get("noNewPrivileges")))
            fdpass.send_fds(chan, {"kind": "listener", **names}, [listener])
            os.close(listener)
        else:
            # a pool's template: its init (actors/pool/init.c) runs no code of the
            # container's and gives each sandbox it makes the filters itself; the
            # views go on without a listener, and the sandboxes get them with the
            # template's mount table, each rendered from its own cgroup
            send_line(chan, "views")
        apply_user(process)
        if user_ns:
            # Changing ids made us non-dumpable: our /proc entries now belong to
            # host root, and the sentry, which opens them for us with our
            # (mapped) fsuid, would be refused /proc/self/fd (hooks list it).
            # After execve the kernel would make us dumpable anyway.
            libc.prctl(PR_SET_DUMPABLE, 1)
        if process.get("noNewPrivileges"):
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        send_line(chan, "ready")
        if chan.recv(16) != b"start":
            return 1  # the sandbox went away or changed its mind
        # startContainer: in the container, just before the user process.
        hooks.run_hooks("startContainer", config, dict(state, status="created"))
        try:
            os.execve(path, args, envp)
        except OSError as err:
            raise SystemFailure(f'exec: "{args[0]}": {err.strerror}') from err
    except ZentryError as exc:
        fail(chan, exc)
        return 127 if isinstance(exc, ExecNotFound) else 1
    except OSError as exc:
        fail(chan, SystemFailure(f"container init: {exc}"))
        return 1
    except BaseException as exc:
        fail(chan, exc)
        return 1
    return 0


def uts_names() -> dict:
    """The uts namespace's real names, for the sentry's uname (read before the filter)."""
    try:
        with open("/proc/sys/kernel/domainname") as f:
            domain = f.read().strip()
    except OSError:
        domain = ""
    return {"nodename": os.uname().nodename, "domainname": "" if domain == "(none)" else domain}


def install_sentry(config: dict, no_new_privs: bool) -> int:
    """Load the seccomp filters; returns the sentry's listener fd.

    Everything it needs was imported with this module, before the pivot into
    the container's root (after it, Python could import nothing from the
    host). Failing to load is an error: a container never runs without its
    sentry.
    """
    seccomp = (config.get("linux") or {}).get("seccomp")
    trace = (config.get("annotations") or {}).get(STRACE_ANNOTATION) == "true"
    return sentry_filter.install(seccomp, no_new_privs=no_new_privs, trace=trace)



def intermediate_main(assignment: dict, ready_fd: int) -> int:
    """The pre-forked blank of ``create``, once assigned its container: fork the init.

    ``assignment``: fd_socket, container_id, config, bundle, console_socket.
    Reports ready once the sandbox has our connection; then waits for the
    sandbox's ``spawn`` (the prepared root), makes the init and exits.
    """
    import json

    from zentry.actors.spawn import report_ready

    config = assignment["config"]
    chan = fdpass.connect(assignment["fd_socket"])
    # Blocking, no deadline: the init inherits this socket and waits on it for
    # "start" as long as the container stays created; the sandbox's death is EOF.
    chan.settimeout(None)
    fdpass.send_fds(chan, {"kind": "init", "container_id": assignment["container_id"]}, [])
    report_ready(ready_fd)
    try:
        line = chan.recv(65536)
        if not line.startswith(b"spawn "):
            return 1  # the sandbox closed: create failed before the init was needed
        spawn = json.loads(line[6:])
        rootfs, gofer_pid = spawn["rootfs"], int(spawn["gofer_pid"])
        pid_ns = next((ns for ns in (config.get("linux") or {}).get("namespaces") or [] if ns["type"] == "pid"), None)
        if any(ns["type"] == "user" for ns in (config.get("linux") or {}).get("namespaces") or []):
            # a user namespace comes first: every namespace made after it is its own
            enter_user_namespace(chan, config, gofer_pid, rootfs)
        if pid_ns is not None:
            if pid_ns.get("path"):
                join_namespace("pid", pid_ns["path"], libc.CLONE_NEWPID)
            else:
                libc.unshare(libc.CLONE_NEWPID)
        if not any(ns["type"] == "time" for ns in (config.get("linux") or {}).get("namespaces") or []):
            # the boot clock (/proc/uptime, sysinfo) and process start times count
            # from the container's start, in the kernel (procps ps: elapsed, %CPU)
            from zentry.sentry.views import enter_time_namespace

            enter_time_namespace()
        init = os.fork()
        if init == 0:
            code = 1
            try:
                state = {
                    "ociVersion": "1.2.0",
                    "id": assignment["container_id"],
                    "status": "creating",
                    "bundle": assignment["bundle"],
                    "annotations": dict(config.get("annotations") or {}),
                }
                code = container_init(chan, config, rootfs, gofer_pid, assignment["console_socket"], state)
            finally:
                os._exit(code)
        send_line(chan, f"pid {init}")
        return 0
    except BaseException as exc:
        fail(chan, exc)
        return 1
