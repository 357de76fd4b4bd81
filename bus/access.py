"""Who may have written what zentry trusts: the one ownership-and-mode check.

Root acts on what it finds under ``--root`` (state files name pids to
signal and directories to remove) and in bus directories (sockets it talks
to). Anything there that another user could have written or replaced is
refused rather than trusted: :func:`check_private`.
"""

from __future__ import annotations

import os
import stat

from zentry.bus.errors import PermissionDenied


def trusted_owner(uid: int) -> bool:
    """root, or the user running zentry."""
    return uid == 0 or uid == os.geteuid()


def check_private(path: str, what: str, *, directory: bool, st: os.stat_result | None = None) -> None:
    """Refuse ``path`` unless it is a real (not symlinked) directory or regular
    file owned by root or this user and writable by nobody else.

    ``st``: its stat already taken (e.g. fstat of an open state file);
    otherwise it is lstat'ed (a symlink is refused, not followed).
    """
    if st is None:
        st = os.lstat(path)
    problem = None
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        problem = "not a directory" if directory else "not a regular file"
    elif not trusted_owner(st.st_uid):
        problem = f"owned by uid {st.st_uid}"
    elif st.st_mode & 0o022:
        problem = f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise PermissionDenied(f"refusing {what} {path}: {problem}; it must be owned by root and writable only by its owner")
