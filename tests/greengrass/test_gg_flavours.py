"""The lite and classic flavours of the nucleus emulator: what each refuses at deployment and over IPC."""

from __future__ import annotations

import base64
import json
import socket
import sys
from typing import Any

import pytest
from awsiot.greengrasscoreipc.model import ServiceError

from devkit.nucleus import FLAVOURS, DeploymentError, NucleusEmulator, wire
from devkit.nucleus.lite_objects import (
    CONFIG_WRITE_ARENA_BYTES,
    CONFIG_WRITE_ENVELOPE_BYTES,
    GG_KV_BYTES,
    GG_OBJECT_BYTES,
    MAX_OBJECT_DEPTH,
    MAX_OBJECT_SUBOBJECTS,
    count_subobjects,
    decode_bytes,
)
from tests.greengrass.gg_support import AGENT_RECIPE, THING, probe_recipe, write_component

APP = "com.test.App"
OTHER = "com.test.Other"


def _padded(recipe: dict[str, Any], size: int) -> dict[str, Any]:
    recipe["ComponentDescription"] = "x" * size
    return recipe


def _subobjects(recipe: dict[str, Any], total: int) -> dict[str, Any]:
    """The recipe padded with an unknown top-level key (lite still counts it) to ``total`` subobjects."""
    recipe["XPad"] = list(range(total - count_subobjects(recipe) - 2))
    assert count_subobjects(recipe) == total
    return recipe


def _deep(recipe: dict[str, Any], levels: int) -> dict[str, Any]:
    """The recipe with a scalar ``levels`` objects below its root (top-level key XDeep, then maps)."""
    node: Any = "leaf"
    for _ in range(levels - 1):
        node = {"a": node}
    recipe["XDeep"] = node
    return recipe


def _config_bytes(recipe: dict[str, Any], total: int) -> dict[str, Any]:
    """The recipe's DefaultConfiguration padded so that ggconfigd's decode of it takes exactly ``total`` bytes."""
    conf = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    extra = total - CONFIG_WRITE_ENVELOPE_BYTES - decode_bytes(conf) - GG_KV_BYTES  # the "pad" key itself
    keys = next(k for k in range(extra // GG_KV_BYTES, -1, -1) if (extra - k * GG_KV_BYTES) % GG_OBJECT_BYTES == 0)
    conf.update({f"k{i}": i for i in range(keys)})
    conf["pad"] = list(range((extra - keys * GG_KV_BYTES) // GG_OBJECT_BYTES))
    assert CONFIG_WRITE_ENVELOPE_BYTES + decode_bytes(conf) == total
    assert count_subobjects(recipe) <= MAX_OBJECT_SUBOBJECTS  # the recipe itself passes
    return recipe


#: (case, recipes to deploy (the first is the one refused), lite's message)
LITE_REFUSALS = [
    (
        "recipe of 256 subobjects",
        [_subobjects(probe_recipe(APP), MAX_OBJECT_SUBOBJECTS + 1)],
        "Visited object's subobjects exceeds maximum. Failed to do dependency resolution",
    ),
    (
        "an object 15 levels below the recipe's root",
        [_deep(probe_recipe(APP), MAX_OBJECT_DEPTH)],
        "Visited object's depth exceeds maximum.",
    ),
    (
        "DefaultConfiguration over ggconfigd's decode arena",
        [_config_bytes(probe_recipe(APP), CONFIG_WRITE_ARENA_BYTES + GG_OBJECT_BYTES)],
        "Insufficient memory to decode packet. Failed to send default config to ggconfigd.",
    ),
    ("recipe over 8,196 B", [_padded(probe_recipe(APP), 8200)], "Insufficient memory for file"),
    (
        "manifest without Platform.runtime",
        [probe_recipe(APP, platform={"os": "linux"})],
        "No lifecycle was found for linux",
    ),
    (
        "manifest for another runtime",
        [probe_recipe(APP, platform={"os": "linux", "runtime": "aws_nucleus_classic"})],
        "No lifecycle was found for linux",
    ),
    (
        "upper-case lifecycle keys",
        [probe_recipe(APP, lifecycle={"Install": "true", "Run": f"exec {sys.executable} {{artifacts:path}}/app.py"})],
        "no run or startup step",
    ),
    (
        "another component's variable",
        [
            probe_recipe(APP, run=f"exec {sys.executable} {{{OTHER}:artifacts:path}}/app.py", dependencies={OTHER: {}}),
            probe_recipe(OTHER, run="exec sleep 3600"),
        ],
        f"Unhandled variable substitution: {OTHER}:artifacts:path.",
    ),
    (
        "shell braces read as a recipe variable",
        [probe_recipe(APP, run=f'D="${{HOME}}"; exec {sys.executable} {{artifacts:path}}/app.py')],
        "No : found in recipe variable.",
    ),
    (
        "SOFT dependency on a component not in the deployment",
        [probe_recipe(APP, dependencies={"aws.greengrass.ShadowManager": {"DependencyType": "SOFT"}})],
        "dependency aws.greengrass.ShadowManager (SOFT) is not part of the deployment",
    ),
    # recipe.c: an empty Lifecycle and no global one select nothing
    ("artifact-only component", [probe_recipe(APP, lifecycle={})], "No lifecycle was found for linux"),
    ("install-only component", [probe_recipe(APP, lifecycle={"install": "true"})], "no run or startup step"),
]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(("case", "recipes", "message"), LITE_REFUSALS, ids=[c[0] for c in LITE_REFUSALS])
def test_lite_refuses_what_classic_accepts(nucleus, tmp_path, flavour, case, recipes, message):
    build = tmp_path / "build"
    for recipe in recipes:
        write_component(build, json.loads(json.dumps(recipe)))
    if flavour == "lite":
        with pytest.raises(DeploymentError) as info:
            nucleus.deploy_build(build)
        assert message in info.value.message and info.value.component in (APP, f"{APP}-1.0.0.json")
        assert nucleus.component_pid(APP) is None  # nothing of a refused deployment runs
        assert not (tmp_path / "greengrass" / "packages" / "artifacts" / APP).exists()
        return
    result = nucleus.deploy_build(build)
    assert APP in result.installed
    assert nucleus.wait_for_state(APP, ("RUNNING", "FINISHED"), 30)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_compliant_recipe_deploys_and_runs_with_the_flavours_paths(nucleus, tmp_path, flavour):
    """Positive control: the recipe form lite accepts runs on both; lite's paths end with a slash."""
    run = f'exec {sys.executable} {{artifacts:path}}/app.py "{{artifacts:decompressedPath}}" "{{work:path}}"'
    write_component(tmp_path / "build", probe_recipe(APP, run=run))
    assert nucleus.deploy_build(tmp_path / "build").installed == [APP]
    assert nucleus.wait_for(lambda msgs: any(m.component == APP for m in msgs), 60), "the component never reported"
    (report,) = [json.loads(m.payload) for m in nucleus.published if m.component == APP]
    root = tmp_path / "greengrass"
    slash = "/" if flavour == "lite" else ""
    assert report["argv"] == [f"{root}/packages/artifacts-unarchived/{APP}/1.0.0{slash}", f"{root}/work/{APP}{slash}"]
    assert nucleus.configuration(APP)["thing"] == (THING if flavour == "classic" else "{iot:thingName}")
    assert nucleus.component_state(APP) == "RUNNING"


@pytest.mark.parametrize("flavour", ["lite"])
@pytest.mark.parametrize(
    "recipe",
    [
        _subobjects(probe_recipe(APP), MAX_OBJECT_SUBOBJECTS),
        _deep(probe_recipe(APP), MAX_OBJECT_DEPTH - 1),
        _config_bytes(probe_recipe(APP), CONFIG_WRITE_ARENA_BYTES),
    ],
    ids=["255 subobjects", "14 levels deep", "DefaultConfiguration filling the decode arena"],
)
def test_lite_accepts_a_recipe_at_its_object_limits(nucleus, tmp_path, recipe):
    """Positive controls for the refusals above: exactly at each limit lite 2.6.0 deploys and runs it."""
    write_component(tmp_path / "build", json.loads(json.dumps(recipe)))
    assert nucleus.deploy_build(tmp_path / "build").installed == [APP]
    assert nucleus.wait_for(lambda msgs: any(m.component == APP for m in msgs), 60), "the component never reported"
    assert nucleus.configuration(APP).keys() == recipe["ComponentConfiguration"]["DefaultConfiguration"].keys()


# -- IPC ------------------------------------------------------------------------------------------
SHADOW_CALLS = [
    ("get_thing_shadow", {"thing_name": THING, "shadow_name": "battwin-config"}),
    ("update_thing_shadow", {"thing_name": THING, "shadow_name": "battwin-config", "payload": b"{}"}),
    ("delete_thing_shadow", {"thing_name": THING, "shadow_name": "battwin-config"}),
    ("list_named_shadows_for_thing", {"thing_name": THING}),
]


@pytest.mark.parametrize("flavour", ["lite"])
@pytest.mark.parametrize(("method", "kwargs"), SHADOW_CALLS, ids=[c[0] for c in SHADOW_CALLS])
def test_lite_has_no_shadow_ipc(emulator, ipc_client, caplog, method, kwargs):
    with pytest.raises(ServiceError) as info:
        getattr(ipc_client, method)(**kwargs)
    assert info.value.message is None  # lite writes _message (empty here), which the SDK does not read
    assert "Unhandled operation requested" in caplog.text
    assert emulator.shadow(THING, "battwin-config") is None


def _frame(stream_id: int, operation: str, body: dict[str, Any]) -> bytes:
    return wire.rpc_message(
        wire.MessageType.APPLICATION_MESSAGE,
        stream_id,
        headers=[wire.Header.string("operation", operation), wire.Header.string(":content-type", "application/json")],
        payload=json.dumps(body).encode(),
    )


def _exchange(emu: NucleusEmulator, frames: list[bytes]) -> tuple[list[wire.Message], bool]:
    """Send CONNECT then the frames; the messages answered and whether the emulator closed the socket."""
    connect = wire.rpc_message(
        wire.MessageType.CONNECT,
        0,
        headers=[wire.Header.string(":version", "0.1.0")],
        payload=json.dumps({"authToken": emu.svcuid}).encode(),
    )
    decoder = wire.MessageDecoder()
    out: list[wire.Message] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(emu.socket_path)
        s.sendall(connect + b"".join(frames))
        while len(out) < 1 + len(frames):
            data = s.recv(65536)
            if not data:
                return out, True
            out.extend(decoder.feed(data))
    return out, False


def _publish(stream_id: int, payload_bytes: int) -> bytes:
    payload = base64.b64encode(b"x" * payload_bytes).decode()
    body = {"topicName": f"battwin/{THING}/telemetry", "qos": "1", "payload": payload}
    return _frame(stream_id, "aws.greengrass#PublishToIoTCore", body)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lite_closes_the_connection_on_a_frame_over_10000_bytes(make_emulator, flavour):
    emu = make_emulator(AGENT_RECIPE)
    small, big = _publish(1, 7000), _publish(2, 7600)
    assert len(small) <= 10_000 < len(big)
    answers, closed = _exchange(emu, [small, big])
    types = [m.message_type for m in answers]
    if flavour == "lite":
        assert closed and types == [wire.MessageType.CONNECT_ACK, wire.MessageType.APPLICATION_MESSAGE]
        assert emu.oversized_frames == 1 and len(emu.published) == 1
    else:
        assert not closed and types == [wire.MessageType.CONNECT_ACK] + [wire.MessageType.APPLICATION_MESSAGE] * 2
        assert emu.oversized_frames == 0 and len(emu.published) == 2


@pytest.mark.parametrize("flavour", ["lite"])
def test_lite_errors_carry_its_own_fields(make_emulator):
    emu = make_emulator(AGENT_RECIPE)
    answers, _ = _exchange(emu, [_frame(1, "aws.greengrass#GetThingShadow", {"thingName": THING})])
    err = answers[1]
    assert err.message_type == wire.MessageType.APPLICATION_ERROR
    assert err.get_str("service-model-type") == "aws.greengrass#ServiceError"
    assert json.loads(err.payload) == {"_message": "", "_errorCode": "ServiceError"}


def test_unknown_flavour_is_refused(socket_path):
    with pytest.raises(ValueError, match="unknown nucleus flavour 'mini'"):
        NucleusEmulator(socket_path, THING, AGENT_RECIPE, flavour="mini")  # type: ignore[arg-type]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dependencies_on_built_in_components_are_not_resolved(nucleus, tmp_path):
    deps = {"aws.greengrass.TokenExchangeService": {"DependencyType": "HARD"}, "aws.greengrass.Nucleus": {}}
    write_component(tmp_path / "b", probe_recipe(APP, dependencies=deps))
    assert nucleus.deploy_build(tmp_path / "b").installed == [APP]
