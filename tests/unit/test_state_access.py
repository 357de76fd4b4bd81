"""actors/state.py's access rules: what others could have written is refused, never trusted."""

from __future__ import annotations

import json
import os

import pytest

from zentry.actors.state import Record, Store
from zentry.bus.errors import NotFound, PermissionDenied


def _record(cid: str, root: str, **kw) -> Record:
    return Record(id=cid, bundle="/b", sandbox_id=kw.pop("sandbox_id", cid), bus_dir=kw.pop("bus_dir", os.path.join(root, cid)), **kw)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "root"
    s = Store(str(root))
    s.ensure_root()
    return s


def _save(store: Store, rec: Record) -> None:
    os.mkdir(store.dir(rec.id), 0o711)
    store.save(rec)


def test_a_private_root_works_and_is_made_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        s = Store(str(tmp_path / "a" / "b"))
        s.ensure_root()
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "a" / "b").st_mode & 0o777) == "0o711"
    assert oct(os.stat(tmp_path / "a").st_mode & 0o777) == "0o755"
    _save(s, _record("c1", s.root))
    assert s.load("c1").id == "c1" and s.ids() == ["c1"]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_root_others_can_write_is_refused(store, mode):
    _save(store, _record("c1", store.root))
    os.chmod(store.root, mode)
    calls = (lambda s: s.ids(), lambda s: s.load("c1"), lambda s: s.resolve("c1"), lambda s: list(s.records()), lambda s: s.claim("c2"))
    for call in calls:
        with pytest.raises(PermissionDenied, match="refusing state root .*writable by group or others"):
            call(Store(store.root))  # a new command: the check is made once per Store
    assert not os.path.exists(store.dir("c2"))


def test_entries_others_could_have_written_are_refused_or_skipped(store):
    for cid in ("good", "opendir", "openfile", "linked"):
        _save(store, _record(cid, store.root))
    os.chmod(store.dir("opendir"), 0o777)
    os.chmod(store.path("openfile"), 0o622)
    os.rename(store.path("linked"), store.dir("linked") + "/real.json")
    os.symlink("real.json", store.path("linked"))
    assert store.ids() == ["good"]
    assert [r.id for r in store.records()] == ["good"]
    with pytest.raises(PermissionDenied, match="container directory .*mode 0777"):
        store.load("opendir")
    with pytest.raises(PermissionDenied, match="state file .*mode 0622"):
        store.load("openfile")
    with pytest.raises(NotFound, match="unreadable"):
        store.load("linked")  # O_NOFOLLOW


def test_a_state_file_naming_another_bus_directory_is_refused(store, tmp_path):
    _save(store, _record("c1", store.root, bus_dir=str(tmp_path)))
    with pytest.raises(PermissionDenied, match="bus directory"):
        store.load("c1")
    assert store.ids() == ["c1"] and list(store.records()) == []
    # a pod member names its sandbox's directory: that is its own
    _save(store, _record("c2", store.root, sandbox_id="c1", bus_dir=os.path.join(store.root, "c1")))
    assert store.load("c2").sandbox_id == "c1"
    # a state file for another id is not this container's
    data = json.loads(open(store.path("c2")).read())
    data["id"] = "c1"
    with open(store.path("c2"), "w") as f:
        f.write(json.dumps(data))
    with pytest.raises(NotFound, match="not its record"):
        store.load("c2")


def test_save_records_start_times(store):
    rec = _record("c1", store.root, sandbox_pid=os.getpid(), controller_pid=os.getpid())
    _save(store, rec)
    saved = json.loads(open(store.path("c1")).read())
    assert list(saved["pid_starts"]) == [str(os.getpid())]
    fd = store.load("c1").own_process(os.getpid())
    assert fd is not None
    os.close(fd)


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _leave_claim(store, cid: str, pid: int) -> str:
    """What a create killed inside Store.claim leaves: its hidden directory with a lock."""
    path = os.path.join(store.root, f".claim.{cid}.{pid}")
    os.mkdir(path, 0o711)
    open(os.path.join(path, "lock"), "w").close()
    return path


def test_a_killed_creates_claim_is_removed_by_the_next_create_delete_or_list(store):
    store.ensure_root()
    dead, live = _dead_pid(), os.getppid()  # our parent lives on, claiming as far as we know
    by_create, by_delete, by_list = (_leave_claim(store, c, dead) for c in ("c1", "c2", "c3"))
    claiming = _leave_claim(store, "c4", live)
    ours = _leave_claim(store, "c5", os.getpid())  # a dead create's pid reused by us
    store.claim("c1")
    assert not os.path.exists(by_create) and os.path.exists(store.dir("c1"))
    assert store.remove_stale("c2") is False  # no c2 directory: nothing else to remove
    assert not os.path.exists(by_delete)
    assert store.ids() == []  # c1 has no state yet
    assert not os.path.exists(by_list) and not os.path.exists(ours)
    assert os.path.exists(claiming)  # a live create's claim is its own
    store.claim("c5")
    assert os.path.isdir(store.dir("c5"))
