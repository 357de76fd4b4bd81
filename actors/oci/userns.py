"""User namespaces: the container's uid/gid mappings (config-linux.md "User namespace mappings").

A container with a ``user`` namespace sees ids through ``linux.uidMappings``
and ``linux.gidMappings``. This module owns what every actor needs of them:

- ``user_namespace`` finds the namespace entry (new, or joined by ``path``);
- ``complete_mappings`` (at load time) reads the mappings of a namespace
  joined by path, so the gofer and the sandbox always know them; mappings
  given in the config for a joined namespace must match it;
- ``write_mappings`` is run by the sandbox, privileged and outside, for a
  process that has just made a new user namespace. As runc does when it is
  privileged, ``/proc/PID/setgroups`` is left at "allow" (``process.user
  .additionalGids`` need setgroups(2) inside); the kernel only forces
  "deny" on unprivileged writers.
"""

from __future__ import annotations

import os

from zentry.bus.errors import ConfigError, SystemFailure


def user_namespace(config: dict) -> dict | None:
    """The ``linux.namespaces`` entry of type ``user``, or None."""
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "user":
            return ns
    return None


def creates_user_namespace(config: dict) -> bool:
    ns = user_namespace(config)
    return ns is not None and not ns.get("path")


def map_text(mappings: list[dict]) -> bytes:
    """The text written to uid_map/gid_map: one ``inside outside count`` line per entry."""
    return b"".join(b"%d %d %d\n" % (int(m["containerID"]), int(m["hostID"]), int(m["size"])) for m in mappings)


def parse_map(text: str) -> list[dict]:
    """uid_map/gid_map text back into OCI mapping objects."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3:
            inside, outside, size = map(int, fields)
            out.append({"containerID": inside, "hostID": outside, "size": size})
    return out


def write_mappings(pid: int, config: dict) -> None:
    """Write gid_map then uid_map of process ``pid`` (the writer must be privileged, outside)."""
    linux = config.get("linux") or {}
    for kind in ("gid", "uid"):
        text = map_text(linux.get(f"{kind}Mappings") or [])
        try:
            fd = os.open(f"/proc/{pid}/{kind}_map", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text)  # one write: the kernel takes the whole map at once, or nothing
            finally:
                os.close(fd)
        except OSError as err:
            lines = "; ".join(text.decode().splitlines())
            raise SystemFailure(f"cannot write {kind}_map ({lines}) of the container's user namespace: {err.strerror}") from err


def read_mappings(path: str) -> tuple[list[dict], list[dict]]:
    """The (uid, gid) mappings of the user namespace at ``path``, relative to ours.

    A forked child joins the namespace and waits; we read its maps from
    outside (read from a different namespace, they are expressed in the
    reader's ids, whatever the nesting).
    """
    from zentry.sentry.abi import libc

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"cannot open user namespace {path!r}: {err.strerror}") from err
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            libc.setns(fd, libc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
            code = 0
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.close(fd)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise ConfigError(f"cannot join user namespace {path!r} (not a user namespace, or not permitted)")
        maps = []
        for kind in ("uid", "gid"):
            with open(f"/proc/{pid}/{kind}_map") as f:
                maps.append(parse_map(f.read()))
        return maps[0], maps[1]
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def complete_mappings(config: dict) -> None:
    """For a user namespace joined by path: fill in (or check) linux.uidMappings/gidMappings."""
    ns = user_namespace(config)
    if ns is None or not ns.get("path"):
        return
    uids, gids = read_mappings(ns["path"])
    linux = config.setdefault("linux", {})
    for kind, actual in (("uid", uids), ("gid", gids)):
        given = linux.get(f"{kind}Mappings")
        if given and _normal(given) != _normal(actual):
            raise ConfigError(
                f"invalid config.json: linux.{kind}Mappings: do not match those of the user namespace "
                f"{ns['path']!r} ({map_text(actual).decode().strip() or 'none'})"
            )
        linux[f"{kind}Mappings"] = actual


def _normal(mappings: list[dict]) -> list[tuple[int, int, int]]:
    return sorted((int(m["containerID"]), int(m["hostID"]), int(m["size"])) for m in mappings)
