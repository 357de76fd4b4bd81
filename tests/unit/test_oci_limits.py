"""actors/oci/limits.py and the bounded config.json reader: what a
schema-valid config must also respect, each refused with the field and the
limit in one line (the root-only corpus in tests/fault/test_bad_input.py
drives the same through the CLI)."""
from __future__ import annotations

import json
import os
import re
import socket

import pytest

from zentry.actors.gofer import devices
from zentry.actors.oci.config import load_bundle, parse_config
from zentry.actors.oci.limits import MAX_CONFIG_BYTES, bus_limit_error, device_error, env_error, range_error
from zentry.bus.codec import MAX_ARRAY, MAX_MAP, MAX_STR, pack, unpack
from zentry.bus.errors import ConfigError
from helpers.bundle import minimal_config


@pytest.fixture
def config() -> dict:
    return minimal_config(["/bin/true"])


@pytest.mark.parametrize("path, value, message", [
    (("process", "args"), ["a"] * (MAX_ARRAY + 1), f"more than the limit of {MAX_ARRAY}"),
    (("process", "user", "additionalGids"), [0] * (MAX_ARRAY + 1), f"more than the limit of {MAX_ARRAY}"),
    (("annotations",), {f"k{i}": "v" for i in range(MAX_MAP + 1)}, f"more than the limit of {MAX_MAP}"),
    (("hostname",), "h" * (MAX_STR + 1), f"longer than the limit of {MAX_STR} bytes"),
    (("process", "env"), ["A=b\0c"], "contains a NUL character"),
    (("unknownField",), json.loads("[" * 70 + "]" * 70), "nested deeper than 64 levels"),
    (("unknownField",), 2**64, "out of range"),
    (("hostname",), "\ud800", "unpaired surrogate"),
])
def test_over_a_bus_limit_is_named(config, path, value, message):
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    error = bus_limit_error(config)
    assert error is not None and message in error and error.startswith(path[0]), error


def test_just_under_the_bus_limits_is_accepted_and_travels_the_bus(config):
    config["process"]["args"] = ["a"] * MAX_ARRAY
    config["annotations"] = {f"k{i}": "v" for i in range(MAX_MAP)}
    config["hostname"] = "h" * 60
    config["process"]["env"].append("BIG=" + "x" * (MAX_STR - 4))
    assert bus_limit_error(config) is None
    assert unpack(pack(config)) == config


@pytest.mark.parametrize("entry, message", [
    ("=x", "empty variable name"),
    ("NOEQUALS", "is not NAME=value"),
])
def test_bad_env_entries(config, entry, message, tmp_path):
    config["process"]["env"] = ["PATH=/bin", entry]
    assert message in env_error(config)
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):  # at create, not at start
        load_bundle(str(tmp_path))


def test_device_path_that_climbs_is_refused_at_create_and_in_the_gofer(config):
    dev = {"path": "/dev/../../etc/x", "type": "c", "major": 1, "minor": 3}
    config["linux"]["devices"] = [dev]
    assert '".." components' in device_error(config)
    with pytest.raises(ConfigError, match=r'"\.\." components'):
        devices._parse_device(dev)


@pytest.mark.parametrize("key, value", [("major", -1), ("minor", 2**32), ("uid", -1), ("fileMode", -1)])
def test_device_numbers_out_of_range(config, key, value):
    config["linux"]["devices"] = [{"path": "/dev/x", "type": "c", "major": 1, "minor": 3, key: value}]
    assert f"linux.devices[0].{key}: {value} is out of range" in device_error(config)


def test_values_the_kernel_refuses(config):
    config["process"]["oomScoreAdj"] = 1001
    assert "oomScoreAdj: 1001 is out of range" in range_error(config)
    config["process"]["oomScoreAdj"] = -1000
    config["hostname"] = "h" * 65
    assert "hostname: longer than 64 bytes" in range_error(config)
    config["hostname"] = "h" * 64
    assert range_error(config) is None


@pytest.mark.parametrize("raw, message", [
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'{"a": 1e400}', "number 1e400 is out of range"),
    (b'{"a": ' + b"9" * 5000 + b"}", "out of range (more than 20 digits)"),
    (b'\xef\xbb\xbf{}', "byte order mark"),
    ('{"ociVersion": "1.0.2"}'.encode("utf-16"), "not UTF-8 text"),
], ids=["deep", "1e400", "5000 digits", "BOM", "UTF-16"])
def test_unparseable_numbers_and_encodings(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_config(raw)
    assert "Error" not in str(info.value)


def test_config_json_that_is_a_device_is_refused_unread(tmp_path):
    os.symlink("/dev/zero", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="is a character device, not a regular file"):
        load_bundle(str(tmp_path))


def test_config_json_that_is_a_socket_is_refused(tmp_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "config.json"))
        with pytest.raises(ConfigError, match="is a socket, not a regular file"):
            load_bundle(str(tmp_path))


def test_config_json_over_the_size_limit_is_refused(tmp_path):
    with open(tmp_path / "config.json", "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=f"larger than the limit of {MAX_CONFIG_BYTES} bytes"):
        load_bundle(str(tmp_path))

