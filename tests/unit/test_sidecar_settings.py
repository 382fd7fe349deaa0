"""SidecarSettings: defaults, then the TOML file, then the environment, then flags."""

from __future__ import annotations

import pathlib

import pytest

from sidecar.config import SidecarSettings
from sidecar.errors import UsageError

NO_FLAGS: dict[str, object] = {}


def test_defaults_listen_on_a_unix_socket_and_loopback_only() -> None:
    s = SidecarSettings.build(NO_FLAGS, {"HOME": "/h", "XDG_RUNTIME_DIR": "/run/user/7"})
    assert s.listen == ("unix:/run/user/7/kafka-mesh/sidecar.sock", "127.0.0.1:7420")
    assert (s.etcd, s.namespace, s.mapping_file) == (None, "default", None)
    assert s.cache_dir == pathlib.Path("/h/.cache/kafka-mesh")
    assert (s.max_inflight_bytes, s.delivery_timeout_ms, s.log_level) == (64 << 20, 60_000, "info")


def test_flag_beats_environment_beats_file(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "sidecar.toml"
    conf.write_text('etcd = "http://file:2379"\nnamespace = "from-file"\nlisten = ["127.0.0.1:1111"]\n'
                    'delivery_timeout_ms = 5000\nhost_id = "file-host"\n')
    env = {"HOME": "/h", "KAFKA_MESH_NAMESPACE": "from-env", "KAFKA_MESH_LISTEN": "unix:/e.sock,127.0.0.1:2222",
           "KAFKA_MESH_HOST_ID": "env-host"}
    s = SidecarSettings.build({"config": str(conf), "host_id": "flag-host"}, env)
    assert s.etcd == "http://file:2379"                      # only the file says
    assert s.namespace == "from-env"                         # env over file
    assert s.listen == ("unix:/e.sock", "127.0.0.1:2222")
    assert s.delivery_timeout_ms == 5000
    assert s.host_id == "flag-host"                          # flag over env over file


@pytest.mark.parametrize("flags, message", [
    ({"etcd": "http://e:1", "mapping_file": "m.json"}, "give either --etcd or --mapping, not both"),
    ({"delivery_timeout_ms": "soon"}, "delivery-timeout-ms must be a number, got 'soon'"),
    ({"max_inflight_bytes": "10"}, "max-inflight-bytes must be at least 1024, got '10'"),
    ({"log_level": "loud"}, "log-level must be debug, info, warning or error, got 'loud'"),
    ({"commit_interval_ms": "5"}, "commit-interval-ms must be at least 10, got '5'"),
    ({"drain_timeout_s": "-1"}, "drain-timeout-s must be at least 0, got '-1'"),
    ({"config": "/nonexistent/sidecar.toml"}, "cannot read the config file /nonexistent/sidecar.toml"),
])
def test_bad_settings_are_refused_naming_the_setting(flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        SidecarSettings.build(flags, {"HOME": "/h"})
    assert str(e.value).startswith(message)


def test_subscribe_settings_default_and_come_from_the_environment() -> None:
    s = SidecarSettings.build(NO_FLAGS, {"HOME": "/h"})
    assert (s.commit_interval_ms, s.drain_timeout_s) == (1000, 10.0)
    s = SidecarSettings.build(NO_FLAGS, {"HOME": "/h", "KAFKA_MESH_COMMIT_INTERVAL_MS": "250",
                                         "KAFKA_MESH_DRAIN_TIMEOUT_S": "2.5"})
    assert (s.commit_interval_ms, s.drain_timeout_s) == (250, 2.5)


def test_unknown_key_in_the_file_is_named(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text('etcd = "http://e:1"\nlistne = ["x"]\n')
    with pytest.raises(UsageError, match=r"config file .*s.toml: unknown setting\(s\) listne"):
        SidecarSettings.build({"config": str(conf)}, {"HOME": "/h"})
