"""Hostile input everywhere: messages, config, shadow documents, model.json, BMS logs, the CLI.

Each answers with a clear, typed error (or a clean refusal) — never a crash, never data made up.
Fuzzing is property-based (hypothesis); benchmark-size runs are in bench/bench_fuzz.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from device_agent.config import AgentConfig, ConfigError, load_config
from device_agent.shadow.config_sync import judge
from devkit.local_shadow import ShadowStore
from hardware.errors import SourceConfigError, SourceError, SourceExhausted
from hardware.replay import ReplaySource
from schema.messages import BODY_TYPES, Envelope, Sample

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def deep(n: int) -> dict:
    d: dict = {"x": 1}
    for _ in range(n):
        d = {"x": d}
    return d


# -- messages ---------------------------------------------------------------------------------------
@FUZZ
@given(json_values)
def test_envelope_parser_takes_any_json(value):
    try:
        env = Envelope.model_validate(value)
        env.parsed_body()
    except ValidationError:
        pass


@FUZZ
@given(st.sampled_from(sorted(BODY_TYPES)), st.dictionaries(st.text(max_size=15), json_values, max_size=8))
@pytest.mark.slow
def test_body_parsers_take_any_json(kind, value):
    with contextlib.suppress(ValidationError):
        BODY_TYPES[kind].model_validate(value)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[]" * 10_000, b'{"x":' * 5000 + b"1" + b"}" * 5000])
def test_envelope_rejects_garbage_bytes(raw):
    with pytest.raises(ValidationError):
        Envelope.model_validate_json(raw)


def test_sample_rejects_huge_and_non_finite():
    for bad in (math.nan, math.inf, -math.inf, 1e308):
        with pytest.raises(ValidationError):
            Sample(ts=1.0, voltage_v=bad, current_a=0.0, source_id="s")
    with pytest.raises(ValidationError):
        Sample(ts=1.0, voltage_v=3.0, current_a=0.0, source_id="s", cell_voltages_v=(3.0, "x"))


# -- config -----------------------------------------------------------------------------------------
@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["thing_name", "source", "mqtt", "health", "spool", "tracker", "x"]), json_values, max_size=4
    )
)
def test_config_takes_any_structure(value):
    try:
        load_config(None, value)
    except ConfigError as exc:
        assert str(exc).startswith("invalid configuration")


@pytest.mark.parametrize(
    "text",
    [
        "thing_name = 1\n",
        "[source]\nsample_interval_s = inf\n",
        "[source]\nsample_interval_s = 1e400\n",
        "[spool]\nmax_bytes = 99999999999999999999\n",
        '[mqtt]\nurl = "mqtt://host:1883/../../etc"\n',
        "a = " + "[" * 200 + "]" * 200 + "\n",
        "\x00\x01\x02",
        'thing_name = "' + "x" * 100_000 + '"\n',
    ],
)
def test_config_file_hostile_values(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert len(str(exc.value)) < 5000  # names the problem without echoing megabytes back


# -- shadow -----------------------------------------------------------------------------------------
@FUZZ
@given(json_values)
def test_shadow_desired_state_is_judged_never_crashes(desired):
    cfg = AgentConfig()
    if not isinstance(desired, dict):
        desired = {"value": desired}
    new, rejected, changed = judge(cfg, desired)
    AgentConfig.model_validate(new.model_dump())  # whatever was applied is a valid config
    assert set(changed).isdisjoint(rejected)


def test_shadow_path_settings_cannot_be_changed_remotely():
    cfg = AgentConfig()
    new, rejected, _ = judge(
        cfg,
        {
            "spool": {"path": "/etc/passwd"},
            "health": {"model_dir": "../../tmp/evil"},
            "mqtt": {"url": "mqtt://evil:1883"},
            "source": {"url": "replay:/etc/shadow"},
        },
    )
    assert new == cfg
    assert set(rejected) == {"spool.path", "health.model_dir", "mqtt.url", "source.url"}


@FUZZ
@given(json_values)
def test_shadow_service_takes_any_request(request):
    store = ShadowStore()
    code, _result = store.update("t", "s", request)
    assert code in (0, 400, 409, 413)


def test_shadow_service_limits():
    store = ShadowStore()
    assert store.update("t", "s", {"state": {"desired": deep(20)}})[0] == 400
    assert store.update("t", "s", {"state": {"desired": {"k": "v" * 10_000}}})[0] == 413


# -- model.json -------------------------------------------------------------------------------------
@FUZZ
@given(value=json_values)
@pytest.mark.slow
def test_model_json_is_validated(tmp_path_factory, value):
    from device_agent.health.hybrid import ModelLoadError, load_hybrid_model

    d = tmp_path_factory.mktemp("m")
    (d / "model.json").write_text(json.dumps(value))
    (d / "model.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelLoadError):
        load_hybrid_model(d)


# -- BMS logs ---------------------------------------------------------------------------------------
@FUZZ
@given(
    rows=st.lists(st.lists(st.text(alphabet='0123456789.-eEnaif, "x', max_size=8), min_size=0, max_size=6), max_size=20)
)
def test_replay_reader_takes_any_rows(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("log") / "log.csv"
    p.write_text("t_s,voltage_v,current_a,temperature_c\n" + "\n".join(",".join(r) for r in rows) + "\n")
    src = ReplaySource(p)
    n = 0
    try:
        while True:
            s = src.poll()
            assert math.isfinite(s.voltage_v) and math.isfinite(s.current_a)
            n += 1
    except SourceExhausted:
        pass
    except SourceError as exc:
        assert "log.csv:" in str(exc)


def test_replay_of_binary_garbage_and_fake_gzip(tmp_path):
    p = tmp_path / "bad.csv.gz"
    p.write_bytes(b"\x1f\x8b" + b"\x00garbage" * 100)
    with pytest.raises(SourceError):
        ReplaySource(p).poll()
    q = tmp_path / "bin.csv"
    q.write_bytes(bytes(range(256)) * 10)
    src = ReplaySource(q)
    with pytest.raises(SourceError) as info:
        while True:
            src.poll()
    # refused as a bad file, not merely read to its end (SourceExhausted is a SourceError too)
    assert not isinstance(info.value, SourceExhausted), info.value


def test_replay_path_must_exist_and_be_a_file(tmp_path):
    with pytest.raises(SourceConfigError):
        ReplaySource(tmp_path).open()
    with pytest.raises(SourceConfigError):
        ReplaySource(tmp_path / ".." / "nope.csv").open()


# -- CLI --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["run", "--sample-interval", "nan"],
        ["run", "--sample-interval", "-1"],
        ["run", "--thing", "a/b/#"],
        ["run", "--set", "nonsense"],
        ["run", "--set", "source.sample_interval_s=" + "9" * 5000],
        ["run", "--source", "jbd:"],
        ["run", "--source", "modbus-tcp://:99999"],
        ["run", "--config", "/nonexistent.toml"],
        ["replay", "/dev/null", "--out", "/tmp/battwin-out.jsonl"],
    ],
)
def test_cli_hostile_arguments_exit_2_with_a_message(args):
    r = subprocess.run([sys.executable, "-m", "device_agent.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (args, r.stdout[-500:], r.stderr[-500:])
    assert "Traceback" not in r.stderr and r.stderr.strip()


def test_thing_name_cannot_inject_topic_levels():
    for bad in ("a/b", "+", "#", "a b", "", "x" * 200):
        with pytest.raises(ConfigError):
            load_config(None, {"thing_name": bad})
