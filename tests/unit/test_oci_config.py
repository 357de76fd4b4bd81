"""zentry.actors.oci: the schema interpreter agrees with jsonschema; load_bundle's checks and errors."""

from __future__ import annotations

import json
import os
import time

import jsonschema
import pytest
import referencing
import referencing.jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zentry.actors.oci import default_spec, features, load_bundle, parse_config
from zentry.actors.oci.schema import CONFIG_SCHEMA, FEATURES_SCHEMA, load_schema, schema_path, validator
from zentry.actors.oci.validate import Validator, json_equal
from zentry.bus.errors import ConfigError

SCHEMA_DIR = os.path.dirname(schema_path("defs.json"))


# --- the reference implementation over the same files -------------------------
def _registry() -> referencing.Registry:
    resources = []
    for name in sorted(os.listdir(SCHEMA_DIR)):
        if name.endswith(".json"):
            with open(os.path.join(SCHEMA_DIR, name)) as f:
                doc = json.load(f)
            resources.append((name, referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT4)))
    return referencing.Registry().with_resources(resources)


REGISTRY = _registry()


def reference_valid(instance, schema_name: str = CONFIG_SCHEMA) -> bool:
    schema = load_schema(schema_name)
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft4Validator
    # The schema has no "id": its relative $refs ("defs.json#/...") resolve to the registry's names.
    return cls(schema, registry=REGISTRY).is_valid(instance)


def ours_valid(instance, schema_name: str = CONFIG_SCHEMA) -> bool:
    return validator().is_valid(instance, schema_name)


def test_reference_validator_is_wired_to_the_files():
    bad = default_spec()
    bad["linux"]["namespaces"][0]["type"] = "bogus"  # only caught through defs-linux.json
    assert not reference_valid(bad)
    assert reference_valid(default_spec())


# --- the corpus: mutations of a valid default spec ------------------------------
def _set(path, value):
    def mutate(spec):
        node = spec
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(spec):
        node = spec
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def _append(path, value):
    def mutate(spec):
        node = spec
        for part in path:
            node = node[part]
        node.append(value)

    return mutate


MUTATIONS = {
    # valid
    "unchanged": lambda s: None,
    "no-process-args-list-ok": _set(("process", "args"), ["/bin/true", "x"]),
    "user-with-umask": _set(("process", "user"), {"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [5, 6]}),
    "annotations": _set(("annotations",), {"org.example.key": "v"}),
    "pids-limit": _set(("linux", "resources", "pids"), {"limit": 64}),
    "memory": _set(("linux", "resources", "memory"), {"limit": 1 << 30, "swap": -1, "swappiness": 10}),
    "cpu": _set(("linux", "resources", "cpu"), {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"}),
    "seccomp": _set(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                                            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
    "hook": _set(("hooks",), {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]}),
    "uint64-max": _set(("process", "rlimits", 0, "hard"), 18446744073709551615),
    "hugepages": _set(("linux", "resources", "hugepageLimits"), [{"pageSize": "2MB", "limit": 0}]),
    "blockio-throttle": _set(("linux", "resources", "blockIO"), {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}]}),
    "ns-path": _append(("linux", "namespaces"), {"type": "user", "path": "/proc/1/ns/user"}),
    "float-where-number-any": _set(("process", "scheduler"), {"policy": "SCHED_OTHER", "nice": 0}),
    "unknown-top-level-key": _set(("x-extension",), {"anything": [1, 2]}),
    # invalid
    "no-ociVersion": _delete(("ociVersion",)),
    "ociVersion-int": _set(("ociVersion",), 1),
    "args-string": _set(("process", "args"), "sh"),
    "args-int-item": _set(("process", "args"), ["sh", 3]),
    "no-cwd": _delete(("process", "cwd")),
    "terminal-string": _set(("process", "terminal"), "yes"),
    "uid-negative": _set(("process", "user", "uid"), -1),
    "uid-too-big": _set(("process", "user", "uid"), 4294967296),
    "uid-float": _set(("process", "user", "uid"), 1.0),
    "uid-bool": _set(("process", "user", "uid"), True),
    "rlimit-type-pattern": _set(("process", "rlimits", 0, "type"), "NOFILE"),
    "rlimit-missing-soft": _delete(("process", "rlimits", 0, "soft")),
    "uint64-overflow": _set(("process", "rlimits", 0, "hard"), 18446744073709551616),
    "root-no-path": _delete(("root", "path")),
    "root-readonly-str": _set(("root", "readonly"), "true"),
    "mount-no-destination": _delete(("mounts", 0, "destination")),
    "mount-options-str": _set(("mounts", 1, "options"), "nosuid"),
    "ns-type-bogus": _set(("linux", "namespaces", 0, "type"), "bogus"),
    "ns-no-type": _set(("linux", "namespaces", 0), {"path": "/proc/1/ns/pid"}),
    "device-type": _set(("linux", "devices"), [{"type": "x", "path": "/dev/null"}]),
    "device-filemode": _set(("linux", "devices"), [{"type": "c", "path": "/dev/null", "fileMode": 512}]),
    "seccomp-no-default": _set(("linux", "seccomp"), {"syscalls": []}),
    "seccomp-empty-names": _set(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}),
    "seccomp-bad-action": _set(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_MAYBE"}),
    "hook-timeout-zero": _set(("hooks",), {"poststop": [{"path": "/bin/true", "timeout": 0}]}),
    "hook-no-path": _set(("hooks",), {"poststop": [{"args": ["x"]}]}),
    "annotation-value-int": _set(("annotations",), {"k": 1}),
    "pids-no-limit": _set(("linux", "resources", "pids"), {}),
    "hugepage-size-pattern": _set(("linux", "resources", "hugepageLimits"), [{"pageSize": "2mb", "limit": 1}]),
    "blkio-weight-device": _set(("linux", "resources", "blockIO"), {"weightDevice": [{"major": 8, "weight": 10}]}),
    "blkio-weight-too-big": _set(("linux", "resources", "blockIO"), {"weight": 70000}),
    "propagation": _set(("linux", "rootfsPropagation"), "rprivate"),
    "io-priority-class": _set(("process", "ioPriority"), {"class": "IOPRIO_CLASS_NONE"}),
    "consoleSize-missing-width": _set(("process", "consoleSize"), {"height": 10}),
    "linux-not-object": _set(("linux",), []),
    "personality-domain": _set(("linux", "personality"), {"domain": "LINUX64"}),
    "membw-pattern": _set(("linux", "intelRdt"), {"memBwSchema": "L3:0=1"}),
    "cpu-affinity-pattern": _set(("process", "execCPUAffinity"), {"initial": "a-b"}),
    "env-not-array": _set(("process", "env"), {"PATH": "/bin"}),
    "mount-idmap-missing-size": _set(("mounts", 0, "uidMappings"), [{"containerID": 0, "hostID": 1000}]),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_verdict_equals_jsonschema(name):
    spec = default_spec()
    MUTATIONS[name](spec)
    assert ours_valid(spec) == reference_valid(spec)


def test_corpus_has_both_verdicts():
    verdicts = []
    for mutate in MUTATIONS.values():
        spec = default_spec()
        mutate(spec)
        verdicts.append(reference_valid(spec))
    assert len(MUTATIONS) >= 30
    assert verdicts.count(True) >= 10 and verdicts.count(False) >= 30


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**65), max_value=2**65) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)

_PATHS = [
    ("ociVersion",), ("process",), ("process", "args"), ("process", "user"), ("process", "user", "gid"),
    ("process", "rlimits"), ("process", "rlimits", 0), ("process", "capabilities"), ("root",), ("mounts",),
    ("mounts", 2), ("mounts", 2, "options"), ("linux",), ("linux", "namespaces"), ("linux", "namespaces", 1),
    ("linux", "resources"), ("linux", "resources", "devices", 0), ("linux", "maskedPaths"), ("hostname",),
    ("hooks",), ("annotations",), ("linux", "seccomp"), ("linux", "sysctl"), ("linux", "devices"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(_PATHS), value=json_values)
def test_random_mutations_agree_with_jsonschema(path, value):
    spec = default_spec()
    _set(path, value)(spec)
    assert ours_valid(spec) == reference_valid(spec)


def test_default_specs_and_features_are_schema_valid():
    for spec in (default_spec(), default_spec(["/bin/echo", "hi"]), default_spec(rootless=True)):
        assert reference_valid(spec) and ours_valid(spec)
    assert reference_valid(features(), FEATURES_SCHEMA)
    assert ours_valid(features(), FEATURES_SCHEMA)


# --- the interpreter on hand-written schemas -----------------------------------------
def _inline(schema):
    return Validator(lambda name: schema)


@pytest.mark.parametrize(
    "schema,instance",
    [
        ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, 5),  # both match: invalid
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "x"),
        ({"not": {"type": "string"}}, "x"),
        ({"type": ["string", "null"]}, None),
        ({"uniqueItems": True}, [1, True]),
        ({"uniqueItems": True}, [1, 1.0]),
        ({"uniqueItems": True}, [{"a": [1]}, {"a": [1]}]),
        ({"additionalProperties": False, "properties": {"a": {}}, "patternProperties": {"^x-": {}}}, {"a": 1, "x-b": 2}),
        ({"additionalProperties": False, "properties": {"a": {}}}, {"b": 1}),
        ({"additionalProperties": {"type": "integer"}}, {"b": "s"}),
        ({"items": [{"type": "string"}], "additionalItems": False}, ["a", "b"]),
        ({"maxItems": 1}, [1, 2]),
        ({"minimum": 5, "exclusiveMinimum": True}, 5),
        ({"maximum": 5, "exclusiveMaximum": True}, 4.5),
        ({"multipleOf": 0.5}, 1.5),
        ({"multipleOf": 3}, 10),
        ({"minLength": 2}, "é"),
        ({"dependencies": {"a": ["b"]}}, {"a": 1}),
        ({"enum": [[1, 2], {"k": None}]}, {"k": None}),
        ({"minProperties": 1}, {}),
        ({"type": "number"}, False),
    ],
)
def test_keywords_agree_with_jsonschema(schema, instance):
    expected = jsonschema.Draft4Validator(schema).is_valid(instance)
    assert _inline(schema).is_valid(instance, "inline") == expected


def test_json_equal_distinguishes_booleans():
    assert json_equal(1, 1.0) and not json_equal(1, True) and not json_equal([0], [False])


def test_error_paths_name_the_spot():
    spec = default_spec()
    spec["linux"]["namespaces"][2]["type"] = "bogus"
    err = validator().first_error(spec, CONFIG_SCHEMA)
    assert err.where == "linux.namespaces[2].type"
    assert '"bogus" is not one of' in err.message


# --- load_bundle: files, semantic checks, one-line errors ------------------------
@pytest.fixture
def bundle(tmp_path):
    os.mkdir(tmp_path / "rootfs")
    return tmp_path


def _write(bundle, spec):
    (bundle / "config.json").write_text(json.dumps(spec))


def _error(bundle, spec, **kw) -> str:
    _write(bundle, spec)
    with pytest.raises(ConfigError) as info:
        load_bundle(str(bundle), **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_bundle_resolves_root(bundle):
    _write(bundle, default_spec())
    config = load_bundle(str(bundle))
    assert config["root"]["path"] == os.path.realpath(bundle / "rootfs")
    assert config["process"]["args"] == ["sh"]


def test_load_bundle_absolute_root_and_symlink(bundle, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("other")
    os.symlink(elsewhere, bundle / "link")
    spec = default_spec()
    spec["root"]["path"] = "link"
    _write(bundle, spec)
    assert load_bundle(str(bundle))["root"]["path"] == os.path.realpath(elsewhere)
    spec["root"]["path"] = str(elsewhere)
    _write(bundle, spec)
    assert load_bundle(str(bundle))["root"]["path"] == os.path.realpath(elsewhere)


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_bundle(str(tmp_path / "nope"))
    assert str(info.value) == f'cannot read config.json in bundle "{tmp_path / "nope"}": no such file'


def test_config_is_a_directory(bundle):
    os.mkdir(bundle / "config.json")
    with pytest.raises(ConfigError, match="is a directory"):
        load_bundle(str(bundle))


def test_bad_json(bundle):
    (bundle / "config.json").write_text('{"ociVersion": "1.0.0",')
    with pytest.raises(ConfigError) as info:
        load_bundle(str(bundle))
    assert str(info.value).startswith("invalid config.json: not valid JSON: ")
    assert "line 1" in str(info.value)


def test_nan_is_not_json(bundle):
    (bundle / "config.json").write_text('{"ociVersion": NaN}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_bundle(str(bundle))


def test_schema_error_line(bundle):
    spec = default_spec()
    spec["process"]["args"] = "sh"
    assert _error(bundle, spec) == "invalid config.json: process.args: expected array, got string"
    spec = default_spec()
    del spec["ociVersion"]
    assert _error(bundle, spec) == 'invalid config.json: (root): missing required property "ociVersion"'


def _mutated(**changes):
    spec = default_spec()
    for dotted, value in changes.items():
        path = tuple(int(p) if p.isdigit() else p for p in dotted.split("__"))
        if value is None:
            _delete(path)(spec)
        else:
            _set(path, value)(spec)
    return spec


SEMANTIC_CASES = [
    (_mutated(ociVersion="2.0.0"), 'ociVersion: "2.0.0" is not supported'),
    (_mutated(ociVersion="0.9.0"), 'ociVersion: "0.9.0" is not supported'),
    (_mutated(ociVersion="banana"), 'ociVersion: "banana" is not a valid version'),
    (_mutated(process__args=[]), "process.args: must be a non-empty array"),
    (_mutated(process__cwd="work"), 'process.cwd: "work" must be an absolute path'),
    (_mutated(root__path="missing"), "root.path: "),
    (_mutated(mounts__0__destination="proc"), 'mounts[0].destination: "proc" must be an absolute path'),
    (_mutated(hooks={"poststart": [{"path": "bin/x"}]}), 'hooks.poststart[0].path: "bin/x" must be an absolute path'),
    (_mutated(linux__namespaces=[{"type": "pid"}, {"type": "uts"}, {"type": "pid"}]), 'linux.namespaces[2]: duplicate namespace type "pid"'),
    (_mutated(linux__namespaces=[{"type": "user"}, {"type": "uts"}]), "linux: a new user namespace needs both uidMappings and gidMappings"),
    (_mutated(linux__namespaces=[{"type": "mount"}]), "hostname: setting a hostname needs a private uts namespace"),
    (_mutated(linux__namespaces=[{"type": "uts"}, {"type": "net", "path": "/x"}]), "linux.namespaces[1].type:"),
    (_mutated(linux__namespaces=[{"type": "uts"}, {"type": "network", "path": "proc/1/ns/net"}]), 'linux.namespaces[1].path: "proc/1/ns/net" must be an absolute path'),
    (_mutated(process__rlimits=[{"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}] * 2), 'process.rlimits[1]: duplicate rlimit "RLIMIT_NOFILE"'),
    # a namespace path must name a namespace of its type (runtime spec)
    (_mutated(linux__namespaces=[{"type": "uts"}, {"type": "network", "path": "/proc/self/ns/ipc"}]),
     'linux.namespaces[1].path: "/proc/self/ns/ipc" is not a network namespace (it is ipc)'),
    (_mutated(linux__namespaces=[{"type": "uts"}, {"type": "mount", "path": "/proc/self/ns/uts"}]),
     'linux.namespaces[1].path: "/proc/self/ns/uts" is not a mount namespace (it is uts)'),
    (_mutated(linux__namespaces=[{"type": "uts"}, {"type": "ipc", "path": "/etc/hostname"}]),
     'linux.namespaces[1].path: "/etc/hostname" is not a namespace'),
    (_mutated(linux__namespaces=[{"type": "uts"}, {"type": "ipc", "path": "/nonexistent/ns"}]),
     'linux.namespaces[1].path: cannot open "/nonexistent/ns": no such file or directory'),
    # sysctls that would change the host's (runc's validator refuses the same)
    (_mutated(linux__sysctl={"net.ipv4.ping_group_range": "0 0"}, linux__namespaces=[{"type": "uts"}]),
     'linux.sysctl: "net.ipv4.ping_group_range" needs a private network namespace'),
    (_mutated(linux__sysctl={"kernel.sem": "1 2 3 4"}, linux__namespaces=[{"type": "uts"}]),
     'linux.sysctl: "kernel.sem" needs a private ipc namespace'),
    (_mutated(linux__sysctl={"kernel.hostname": "x"}), 'linux.sysctl: "kernel.hostname" conflicts with the "hostname" field'),
    (_mutated(linux__sysctl={"kernel.domainname": "x"}, hostname=None, linux__namespaces=[{"type": "ipc"}]),
     'linux.sysctl: "kernel.domainname" needs a private uts namespace'),
    (_mutated(linux__sysctl={"kernel.pid_max": "4096"}), 'linux.sysctl: "kernel.pid_max" is not in a namespace of the container'),
]


@pytest.mark.parametrize("spec,expected", SEMANTIC_CASES)
def test_semantic_errors(bundle, spec, expected):
    message = _error(bundle, spec)
    assert message.startswith("invalid config.json: " + expected), message


def test_root_missing_and_not_a_directory(bundle):
    spec = default_spec()
    del spec["root"]
    assert _error(bundle, spec) == "invalid config.json: root: missing (required on Linux)"
    (bundle / "file").write_text("")
    spec = _mutated(root__path="file")
    assert _error(bundle, spec).endswith("is not a directory")
    assert "does not exist" in _error(bundle, _mutated(root__path="missing"))


def test_process_required_only_for_create(bundle):
    spec = default_spec()
    del spec["process"]
    assert _error(bundle, spec) == "invalid config.json: process: missing (required to create a container)"
    assert "process" not in load_bundle(str(bundle), require_process=False)


def test_user_namespace_with_mappings_is_fine(bundle):
    spec = default_spec(rootless=True)
    _write(bundle, spec)
    assert load_bundle(str(bundle))["linux"]["uidMappings"][0]["hostID"] == os.getuid()


def test_joined_user_namespace_needs_no_mappings(bundle):
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        pytest.skip("needs util-linux unshare")
    # a user namespace of its own (pid 1's may not be ours to open; our own cannot be joined)
    holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/user"
        deadline = time.monotonic() + 10
        while os.readlink(path) == os.readlink("/proc/self/ns/user") and time.monotonic() < deadline:
            time.sleep(0.01)
        spec = _mutated(linux__namespaces=[{"type": "uts"}, {"type": "user", "path": path}])
        _write(bundle, spec)
        load_bundle(str(bundle))
    finally:
        holder.kill()
        holder.wait()


def test_mappings_without_user_namespace_warn(bundle, caplog):
    spec = default_spec()
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    _write(bundle, spec)
    load_bundle(str(bundle))
    assert "ignored without a user namespace" in caplog.text


def test_sysctl_names_in_either_form():
    from zentry.actors.oci.config import sysctl_name, sysctl_path

    assert sysctl_name("net/ipv4/conf/eth0.100/rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
    assert sysctl_path("net/ipv4/conf/eth0.100/rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl_path("kernel.shm_rmid_forced") == "/proc/sys/kernel/shm_rmid_forced"


def test_recursive_rootfs_propagation_passes_the_schema(bundle):
    for value in ("rprivate", "rslave", "rshared", "runbindable"):
        _write(bundle, _mutated(linux__rootfsPropagation=value))
        assert load_bundle(str(bundle))["linux"]["rootfsPropagation"] == value
    _write(bundle, _mutated(linux__rootfsPropagation="rbogus"))
    with pytest.raises(ConfigError, match="rootfsPropagation"):
        load_bundle(str(bundle))


def test_unknown_capabilities_warn(bundle, caplog):
    spec = default_spec()
    spec["process"]["capabilities"]["bounding"].append("CAP_NOT_A_CAPABILITY")
    _write(bundle, spec)
    load_bundle(str(bundle))
    assert "ignoring unknown or unavailable capabilities: CAP_NOT_A_CAPABILITY" in caplog.text


def test_parse_config_accepts_text_and_bytes():
    text = json.dumps(default_spec())
    assert parse_config(text) == parse_config(text.encode())


# --- default_spec -----------------------------------------------------------------
def test_default_spec_content():
    spec = default_spec()
    proc = spec["process"]
    assert proc["terminal"] is True and proc["args"] == ["sh"] and proc["cwd"] == "/"
    assert any(e.startswith("PATH=") for e in proc["env"]) and any(e.startswith("TERM=") for e in proc["env"])
    for kind in ("bounding", "effective", "permitted"):
        assert sorted(proc["capabilities"][kind]) == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert proc["noNewPrivileges"] is True
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    assert "/proc/kcore" in spec["linux"]["maskedPaths"] and "/proc/sys" in spec["linux"]["readonlyPaths"]


def test_default_spec_is_fresh_each_time():
    a = default_spec()
    a["mounts"][0]["options"] = ["x"]
    a["linux"]["maskedPaths"].append("/y")
    fresh = default_spec()
    assert "options" not in fresh["mounts"][0] and "/y" not in fresh["linux"]["maskedPaths"]


def test_default_spec_args_and_rootless():
    assert default_spec(["/bin/echo", "hi"])["process"]["args"] == ["/bin/echo", "hi"]
    spec = default_spec(rootless=True)
    types = {n["type"] for n in spec["linux"]["namespaces"]}
    assert "user" in types and "network" not in types
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
    assert "/sys/fs/cgroup" not in [m["destination"] for m in spec["mounts"]]
    sysfs = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "rbind" in sysfs["options"]
    with pytest.raises(TypeError):
        default_spec("sh")
