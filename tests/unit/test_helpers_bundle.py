"""tests/helpers: bundles are valid OCI configs, overrides merge, the rootfs is
complete.  No root needed."""
from __future__ import annotations

import json
import os

import pytest

from helpers.bundle import (MASKED_PATHS, READONLY_PATHS, BusyboxMissing, busybox_applets,
                            deep_merge, make_bundle, minimal_config)


def test_minimal_config_has_required_fields():
    cfg = minimal_config(["/bin/echo", "hi"])
    assert cfg["ociVersion"].startswith("1.")
    assert cfg["root"] == {"path": "rootfs", "readonly": False}
    proc = cfg["process"]
    assert proc["args"] == ["/bin/echo", "hi"] and proc["terminal"] is False and proc["cwd"] == "/"
    assert any(e.startswith("PATH=") for e in proc["env"])
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert "cgroupsPath" not in cfg["linux"]
    dests = {m["destination"]: m["type"] for m in cfg["mounts"]}
    assert dests == {"/proc": "proc", "/dev": "tmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs",
                     "/dev/mqueue": "mqueue", "/sys": "sysfs"}
    sys_opts = next(m["options"] for m in cfg["mounts"] if m["destination"] == "/sys")
    assert "ro" in sys_opts
    assert cfg["linux"]["maskedPaths"] == MASKED_PATHS and "/proc/kcore" in MASKED_PATHS
    assert cfg["linux"]["readonlyPaths"] == READONLY_PATHS and "/proc/sys" in READONLY_PATHS


def test_deep_merge_recurses_replaces_and_deletes():
    base = {"process": {"terminal": False, "cwd": "/"}, "hostname": "a", "linux": {"x": 1}}
    deep_merge(base, {"process": {"terminal": True}, "hostname": None, "linux": {"x": [2]}})
    assert base == {"process": {"terminal": True, "cwd": "/"}, "linux": {"x": [2]}}


def test_config_matches_oci_schema():
    """The built-in config validates against the OCI runtime-spec JSON schema
    shipped in actors/schema, checked with jsonschema (not zentry's validator)."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    pytest.importorskip("referencing.jsonschema")
    from importlib import resources

    try:
        schema_dir = resources.files("zentry.actors").joinpath("schema")
    except ModuleNotFoundError as err:
        pytest.skip(f"zentry.actors is not importable: {err}")
    if not schema_dir.joinpath("config-schema.json").is_file():
        pytest.skip("actors/schema/config-schema.json is not shipped yet")
    docs = {f.name: json.loads(f.read_text()) for f in schema_dir.iterdir() if f.name.endswith(".json")}
    registry = referencing.Registry().with_resources(
        (name, referencing.Resource.from_contents(doc, referencing.jsonschema.DRAFT4))
        for name, doc in docs.items())
    schema = docs["config-schema.json"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in cls(schema, registry=registry).iter_errors(minimal_config(["/bin/true"]))]
    assert errors == []


def test_make_bundle_writes_rootfs_and_config(busybox_bundle):
    try:
        bundle = busybox_bundle(["/bin/sh", "-c", "echo hi"], use_cli=False,
                                process={"terminal": True}, hostname="custom")
    except BusyboxMissing as err:
        pytest.skip(str(err))
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
    assert cfg["process"]["terminal"] is True and cfg["hostname"] == "custom"
    rootfs = bundle / "rootfs"
    assert os.access(rootfs / "bin" / "busybox", os.X_OK)
    for applet in ("sh", "echo", "ls", "cat", "sleep"):
        assert os.readlink(rootfs / "bin" / applet) == "busybox"
    assert set(os.listdir(rootfs / "bin")) >= set(busybox_applets())
    for d in ("proc", "dev", "sys", "tmp"):
        assert (rootfs / d).is_dir()
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (rootfs / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    assert (rootfs / "etc" / "group").exists() and (rootfs / "etc" / "hostname").exists()


def test_bundles_get_private_rootfs_copies(busybox_bundle):
    try:
        a = busybox_bundle(["/bin/true"], use_cli=False)
        b = busybox_bundle(["/bin/true"], use_cli=False)
    except BusyboxMissing as err:
        pytest.skip(str(err))
    with open(a / "rootfs" / "etc" / "hostname", "w") as f:  # in place, same inode
        f.write("changed\n")
    assert (b / "rootfs" / "etc" / "hostname").read_text() == "zentry-test\n"
