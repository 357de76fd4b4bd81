"""zentry.actors.oci.features: the Features structure is schema-valid and says what zentry does."""

from __future__ import annotations

import sys
import types

import jsonschema
import pytest

from zentry.actors.oci import default_spec, features
from zentry.actors.oci.config import HOOK_KINDS
from zentry.actors.oci.schema import FEATURES_SCHEMA, validator

from test_oci_config import reference_valid  # noqa: E402  (same folder: the jsonschema registry)


def test_features_validate_against_the_features_schema():
    doc = features()
    assert reference_valid(doc, FEATURES_SCHEMA)
    assert validator().errors(doc, FEATURES_SCHEMA) == []


def test_versions_and_lists():
    doc = features()
    assert (doc["ociVersionMin"], doc["ociVersionMax"]) == ("1.0.0", "1.2.0")
    assert doc["hooks"] == list(HOOK_KINDS)
    assert {"bind", "rbind", "ro", "nosuid", "rro", "tmpcopyup"} <= set(doc["mountOptions"])
    assert not any("=" in o for o in doc["mountOptions"])  # no filesystem data options
    linux = doc["linux"]
    assert set(linux["namespaces"]) == {"cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"}
    assert len(linux["capabilities"]) == len(set(linux["capabilities"])) == 41
    assert linux["capabilities"][0] == "CAP_CHOWN" and linux["capabilities"][-1] == "CAP_CHECKPOINT_RESTORE"
    assert linux["cgroup"] == {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False}
    assert linux["apparmor"] == {"enabled": False} and linux["selinux"] == {"enabled": False}
    assert doc["annotations"]["org.opencontainers.runc.checkpoint.enabled"] == "false"
    assert "io.kubernetes.cri.sandbox-id" in doc["potentiallyUnsafeConfigAnnotations"]


def test_default_spec_uses_only_recognized_names():
    doc, spec = features(), default_spec()
    for caps in spec["process"]["capabilities"].values():
        assert set(caps) <= set(doc["linux"]["capabilities"])
    for ns in spec["linux"]["namespaces"]:
        assert ns["type"] in doc["linux"]["namespaces"]
    for mount in spec["mounts"]:
        flags = [o for o in mount.get("options", []) if "=" not in o and o != "newinstance"]
        assert set(flags) <= set(doc["mountOptions"]), mount


def test_seccomp_fallback_without_the_sentry(monkeypatch):
    monkeypatch.setitem(sys.modules, "zentry.sentry.oci", None)  # import fails
    seccomp = features()["linux"]["seccomp"]
    assert seccomp["enabled"] is True
    assert "SCMP_ACT_ERRNO" in seccomp["actions"] and "SCMP_ARCH_X86_64" in seccomp["archs"]
    assert reference_valid(features(), FEATURES_SCHEMA)


def test_seccomp_comes_from_the_sentry_when_installed(monkeypatch):
    fake = types.ModuleType("zentry.sentry.oci")
    fake.supported = lambda: {"enabled": True, "actions": ["SCMP_ACT_NOTIFY"], "knownFlags": ["SECCOMP_FILTER_FLAG_LOG"]}
    monkeypatch.setitem(sys.modules, "zentry.sentry.oci", fake)
    assert features()["linux"]["seccomp"] == fake.supported()


def test_a_bad_sentry_answer_would_be_caught_by_the_schema(monkeypatch):
    fake = types.ModuleType("zentry.sentry.oci")
    fake.supported = lambda: {"enabled": "yes"}
    monkeypatch.setitem(sys.modules, "zentry.sentry.oci", fake)
    doc = features()
    assert not reference_valid(doc, FEATURES_SCHEMA)
    err = validator().first_error(doc, FEATURES_SCHEMA)
    assert str(err) == "linux.seccomp.enabled: expected boolean, got string"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc["linux"]["seccomp"], {"properties": {"enabled": {"type": "boolean"}}})
