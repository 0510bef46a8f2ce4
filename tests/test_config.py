import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "battwin.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid():
    c = load_config()
    assert c.source.url == "simulator" and c.health.eol_threshold == 0.8


def test_precedence_toml_env_cli(tmp_path, monkeypatch):
    p = write(tmp_path, 'thing_name = "from-toml"\n[mqtt]\nurl = "mqtt://toml:1883"\n[source]\nsample_interval_s = 5\n')
    c = load_config(p)
    assert (c.thing_name, c.mqtt.url, c.source.sample_interval_s) == ("from-toml", "mqtt://toml:1883", 5.0)
    monkeypatch.setenv("BATTWIN_MQTT__URL", "mqtt://env:1883")
    monkeypatch.setenv("BATTWIN_THING_NAME", "from-env")
    c = load_config(p)
    assert (c.thing_name, c.mqtt.url, c.source.sample_interval_s) == ("from-env", "mqtt://env:1883", 5.0)
    c = load_config(p, {"thing_name": "from-cli"})
    assert c.thing_name == "from-cli" and c.mqtt.url == "mqtt://env:1883"


def test_thing_name_falls_back_to_the_nucleus_thing_name(tmp_path, monkeypatch):
    for var in ("BATTWIN_THING_NAME", "AWS_IOT_THING_NAME", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"):
        monkeypatch.delenv(var, raising=False)
    assert load_config().thing_name == "battwin-sim-1"  # outside Greengrass: the development default
    monkeypatch.setenv("AWS_IOT_THING_NAME", "core-7")  # what the nucleus (classic and lite) sets
    assert load_config().thing_name == "core-7"
    monkeypatch.setenv("BATTWIN_THING_NAME", "")  # empty counts as unset
    assert load_config().thing_name == "core-7"
    assert load_config(write(tmp_path, 'thing_name = "from-toml"\n')).thing_name == "from-toml"
    monkeypatch.setenv("BATTWIN_THING_NAME", "from-env")
    assert load_config().thing_name == "from-env"
    assert load_config(None, {"thing_name": "from-cli"}).thing_name == "from-cli"
    monkeypatch.setenv("AWS_IOT_THING_NAME", "has space")
    monkeypatch.delenv("BATTWIN_THING_NAME")
    with pytest.raises(ConfigError, match="thing_name"):  # validated like any other source
        load_config()


@pytest.mark.parametrize("setting", ["empty BATTWIN_THING_NAME", "under a nucleus"])
def test_no_thing_name_at_all_is_a_clear_error(monkeypatch, setting):
    monkeypatch.delenv("AWS_IOT_THING_NAME", raising=False)
    monkeypatch.delenv("BATTWIN_THING_NAME", raising=False)
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)
    if setting == "under a nucleus":
        monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "/tmp/ipc.socket")
    else:
        monkeypatch.setenv("BATTWIN_THING_NAME", "")
    with pytest.raises(ConfigError) as err:
        load_config()
    assert "BATTWIN_THING_NAME" in str(err.value) and "AWS_IOT_THING_NAME" in str(err.value)


@pytest.mark.parametrize(
    "text,field",
    [
        ("[source]\nsample_interval_s = -1\n", "source.sample_interval_s"),
        ("[health]\neol_threshold = 1.5\n", "health.eol_threshold"),
        ('[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        ('thing_name = "has space"\n', "thing_name"),
        ("[tracker]\nunknown_knob = 1\n", "tracker.unknown_knob"),
        ('[spool]\npolicy = "keep_everything"\n', "spool.policy"),
        ("[source]\nsample_interval_s = nan\n", "source.sample_interval_s"),
    ],
)
def test_invalid_values_name_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert field in str(exc.value)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "thing_name = [unclosed\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_cli_exits_2_naming_the_field(tmp_path):
    p = write(tmp_path, "[source]\nsample_interval_s = 0\n")
    r = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "source.sample_interval_s" in r.stderr and "greater than 0" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "run", "--broker", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "mqtt.url" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "run", "--source", "warp:/dev/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "unknown source scheme 'warp'" in r.stderr


# -- Basic Ingest ---------------------------------------------------------------------------------------------
def test_basic_ingest_topics_from_toml_environment_and_for_packs(tmp_path, monkeypatch):
    from device_agent.config import pack_config

    conf = tmp_path / "c.toml"
    conf.write_text('thing_name = "core-7"\n')
    plain = load_config(conf)
    assert plain.mqtt.basic_ingest_rule_prefix is None  # a bare broker has no rules: plain topics by default
    assert plain.mqtt.topic(plain.thing_name, "health") == "battwin/core-7/health"
    conf.write_text(
        'thing_name = "core-7"\n[mqtt]\nbasic_ingest_rule_prefix = "fleet1"\n[[packs]]\nid = "p1"\nurl = "simulator"\n'
    )
    cfg = load_config(conf)
    assert cfg.mqtt.topic(cfg.thing_name, "telemetry") == "$aws/rules/fleet1_telemetry/battwin/core-7/telemetry"
    pack = pack_config(cfg, cfg.packs[0])  # a pack's agent: its own thing under the same rule
    assert pack.mqtt.topic(pack.thing_name, "cycles") == "$aws/rules/fleet1_cycles/battwin/core-7.p1/cycles"
    # the recipe hands it over as an environment variable (a nucleus renders an unset value as "": plain topics)
    monkeypatch.setenv("BATTWIN_MQTT__BASIC_INGEST_RULE_PREFIX", "battwin")
    assert load_config(conf).mqtt.basic_ingest_rule_prefix == "battwin"
    monkeypatch.setenv("BATTWIN_MQTT__BASIC_INGEST_RULE_PREFIX", "")
    assert load_config(conf).mqtt.basic_ingest_rule_prefix is None


@pytest.mark.parametrize("bad", ["Battwin", "b", "1battwin", "bat_twin", "battwin_telemetry", "a" * 21, "$aws", 7])
def test_a_bad_basic_ingest_rule_prefix_is_a_clear_error(bad):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"mqtt": {"basic_ingest_rule_prefix": bad}})
    (line,) = err.value.errors
    assert line.startswith(
        "config: mqtt.basic_ingest_rule_prefix: Value error, must be the cloud stack's ResourcePrefix"
    )
    assert repr(bad)[:20] in line  # the value given is named
