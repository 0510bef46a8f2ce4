"""The emulator's parts on their own: event-stream codec, authorization, recipes, shadows, configuration."""

from __future__ import annotations

import json
import struct
import uuid
import zlib

import pytest

from devkit.nucleus import wire
from devkit.nucleus.acl import (
    AccessControl,
    AccessControlError,
    classic_mqtt_matches,
    classic_standard_matches,
    lite_default_matches,
    lite_mqtt_matches,
    resource_matches,
)
from devkit.nucleus.config_store import ConfigStore
from devkit.nucleus.recipe import (
    LifecycleContext,
    RecipeError,
    interpolate,
    interpolate_tree,
    json_pointer,
    select_manifest,
    thing_name_resolver,
)
from devkit.nucleus.shadows import ShadowRequestError, ShadowStore, compute_delta

# -- event-stream codec ---------------------------------------------------------------------------
ALL_HEADERS = [
    wire.Header("t", wire.HeaderType.BOOL_TRUE, True),
    wire.Header("f", wire.HeaderType.BOOL_FALSE, False),
    wire.Header("b", wire.HeaderType.BYTE, -5),
    wire.Header("s16", wire.HeaderType.INT16, -30000),
    wire.Header("i32", wire.HeaderType.INT32, 2**31 - 1),
    wire.Header("i64", wire.HeaderType.INT64, -(2**63)),
    wire.Header("buf", wire.HeaderType.BYTE_BUF, b"\x00\xff"),
    wire.Header("str", wire.HeaderType.STRING, "héllo"),
    wire.Header("ts", wire.HeaderType.TIMESTAMP, 1_700_000_000_000),
    wire.Header("id", wire.HeaderType.UUID, uuid.UUID(int=12345)),
]


def test_codec_round_trip_all_header_types_fed_byte_by_byte():
    data = wire.encode_message(ALL_HEADERS, b'{"x":1}') + wire.encode_message([], b"")
    decoder = wire.MessageDecoder()
    got = []
    for i in range(len(data)):
        got.extend(decoder.feed(data[i : i + 1]))
    assert len(got) == 2
    assert list(got[0].headers) == ALL_HEADERS and got[0].payload == b'{"x":1}'
    assert got[1].headers == () and got[1].payload == b""


def test_codec_layout_matches_the_specification():
    msg = wire.encode_message([wire.Header.int32(":stream-id", 7)], b"ab")
    total, headers_len, prelude_crc = struct.unpack(">III", msg[:12])
    assert total == len(msg) and prelude_crc == zlib.crc32(msg[:8])
    # header: u8 name length, name, u8 type (4 = int32), big-endian value
    assert msg[12 : 12 + headers_len] == b"\x0a:stream-id\x04\x00\x00\x00\x07"
    assert msg[12 + headers_len : -4] == b"ab"
    assert struct.unpack(">I", msg[-4:])[0] == zlib.crc32(msg[:-4])


@pytest.mark.parametrize("position", [5, 13, -1])
def test_codec_rejects_corruption(position):
    data = bytearray(wire.encode_message([wire.Header.string("a", "b")], b"payload"))
    data[position] ^= 0x01
    with pytest.raises(wire.WireError):
        wire.MessageDecoder().feed(bytes(data))


def test_rpc_message_carries_the_rpc_headers():
    (msg,) = wire.MessageDecoder().feed(
        wire.rpc_message(wire.MessageType.CONNECT_ACK, 0, flags=wire.MessageFlag.CONNECTION_ACCEPTED)
    )
    assert (msg.message_type, msg.flags, msg.stream_id) == (5, 1, 0)
    assert msg.get(":MESSAGE-TYPE") == 5  # header names compare case-insensitively


# -- authorization --------------------------------------------------------------------------------
#: (pattern, requested resource, classic mqttproxy, lite 2.6.0 mqttproxy): classic WildcardTrie.matchesMQTT,
#: lite ipc_authz.c default matcher OR mqttproxy.c match_topic_filter
MQTT_MATCHING = [
    ("battwin/t1/telemetry", "battwin/t1/telemetry", True, True),
    ("battwin/t1/telemetry", "battwin/t1/telemetryx", False, False),
    ("battwin/+/#", "battwin/t1/telemetry", True, True),
    ("battwin/+/#", "battwin/t1/a/b", True, True),
    ("battwin/+/#", "battwin/t1", True, False),  # classic: "a/#" matches "a"; lite's filter needs the "/"
    ("battwin/+/#", "other/t1/telemetry", False, False),
    ("battwin/+/#", "battwin", False, False),
    ("battwin/+/*", "battwin/t1/telemetry", True, False),  # lite: `*` makes it a glob, where `+` is literal
    ("battwin/+/*", "battwin/+/telemetry", True, True),
    ("battwin/t1/*", "battwin/t1/a/b", True, True),  # `*` crosses `/` on both
    ("battwin/{iot:thingName}/*", "battwin/t1/telemetry", False, False),  # lite 2.6.0 leaves it literal
    ("$aws/things/+/shadow/name/cfg/get", "$aws/things/t1/shadow/name/cfg/get", True, True),
    ("$aws/things/+/shadow/name/cfg/get", "$aws/things/t1/shadow/name/other/get", False, False),
    ("$aws/things/+/shadow/name/cfg/get", "$aws/things/t1/shadow/name/cfg/delete", False, False),
    ("$aws/things/+/shadow/name/cfg/get/+", "$aws/things/t1/shadow/name/cfg/get/+", True, True),
    ("$aws/things/+/shadow/name/cfg/get/+", "$aws/things/t1/shadow/name/cfg/get/accepted/x", False, False),
    ("$aws/things/+/shadow/name/cfg/get/+", "$aws/things/t1/shadow/name/cfg/#", False, False),
    ("$aws/things/+/shadow/name/cfg/get/+", "#", False, False),
    ("a/b+/c", "a/bx/c", False, True),  # classic: `+` inside a level is literal; lite: a wildcard anywhere
    ("a/#/c", "a/x/y", False, True),  # classic: `#` before the end is literal; lite: ends the match
    ("a/${+}", "a/+", True, True),  # escapes: classic ${c}, lite ${...}
    ("a/${+}", "a/x", False, False),
    ("#", "any/topic", True, True),
    ("*", "any/topic", True, True),
]


@pytest.mark.parametrize(("pattern", "resource", "classic", "lite"), MQTT_MATCHING)
def test_mqttproxy_resource_matching_per_nucleus(pattern, resource, classic, lite):
    assert classic_mqtt_matches(pattern, resource) is classic
    assert lite_mqtt_matches(pattern, resource) is lite
    assert resource_matches(pattern, resource, "classic") is classic
    assert resource_matches(pattern, resource, "lite") is lite


@pytest.mark.parametrize(
    ("pattern", "resource", "allowed"),
    [  # pub/sub etc.: classic STANDARD and lite's default matcher are both globs where + and # are literal
        ("local/*", "local/a/b", True),
        ("local/*", "local/#", True),
        ("local/#", "local/a", False),
        ("local/#", "local/#", True),
        ("local/+", "local/a", False),
        ("*/x", "a/b/x", True),
        ("a*c*e", "abcde", True),
        ("a*c*e", "abcd", False),
        ("a.b", "aXb", False),  # literal characters are literal
    ],
)
def test_standard_resource_matching_on_both(pattern, resource, allowed):
    assert classic_standard_matches(pattern, resource) is allowed
    assert lite_default_matches(pattern, resource) is allowed


def test_access_control_parsing_and_decisions():
    acl = AccessControl.from_configuration(
        {
            "accessControl": {
                "aws.greengrass.ipc.mqttproxy": {
                    "p": {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["battwin/t1/*"]}
                },
                "aws.greengrass.ipc.pubsub": {"q": {"operations": ["*"], "resources": ["local/*"]}},
            }
        }
    )
    assert acl.allows("aws.greengrass.ipc.mqttproxy", "aws.greengrass#PublishToIoTCore", "battwin/t1/x")
    assert not acl.allows("aws.greengrass.ipc.mqttproxy", "aws.greengrass#SubscribeToIoTCore", "battwin/t1/x")
    assert not acl.allows("aws.greengrass.ipc.pubsub", "aws.greengrass#PublishToIoTCore", "battwin/t1/x")
    assert acl.allows("aws.greengrass.ipc.pubsub", "aws.greengrass#SubscribeToTopic", "local/a/b")
    assert not AccessControl.from_configuration({}).allows("aws.greengrass.ipc.pubsub", "*", "x")
    with pytest.raises(AccessControlError):
        AccessControl.from_configuration({"accessControl": {"d": {"p": {"operations": [], "resources": ["x"]}}}})


# -- recipes --------------------------------------------------------------------------------------
def test_interpolation_of_recipe_variables():
    ctx = LifecycleContext(
        "thing-7",
        root=__import__("pathlib").Path("/gg"),
        configurations={"c.A": {"a": {"b": 2.5, "on": True}, "list": [1, 2]}, "c.B": {"x": "y"}},
        versions={"c.A": "1.2.3", "c.B": "0.0.1"},
    )
    text = (
        "{iot:thingName} {artifacts:path} {artifacts:decompressedPath} {work:path} {kernel:rootPath} "
        "{configuration:/a/b} {configuration:/a/on} {configuration:/list} {c.B:artifacts:path} {c.B:configuration:/x}"
    )
    assert interpolate(text, ctx.resolver("c.A"), strict=True).split() == [
        "thing-7",
        "/gg/packages/artifacts/c.A/1.2.3",
        "/gg/packages/artifacts-unarchived/c.A/1.2.3",
        "/gg/work/c.A",
        "/gg",
        "2.5",
        "true",
        "[1,2]",
        "/gg/packages/artifacts/c.B/0.0.1",
        "y",
    ]
    assert interpolate("${HOME} {unknown:thing}", ctx.resolver("c.A"), strict=True) == "${HOME} {unknown:thing}"
    with pytest.raises(RecipeError):
        interpolate("{configuration:/missing}", ctx.resolver("c.A"), strict=True)
    tree = interpolate_tree({"k{iot:thingName}": ["battwin/{iot:thingName}/*", 3]}, thing_name_resolver("t1"))
    assert tree == {"kt1": ["battwin/t1/*", 3]}
    assert json_pointer({"a/b": {"~": 1}}, "/a~1b/~0") == 1


def test_manifest_selection():
    recipe = {
        "Manifests": [
            {"Platform": {"os": "linux", "architecture": "aarch64"}, "Name": "arm64"},
            {"Platform": {"os": "linux"}, "Name": "any-linux"},
        ]
    }
    assert select_manifest(recipe, "linux", "aarch64")["Name"] == "arm64"
    assert select_manifest(recipe, "linux", "amd64")["Name"] == "any-linux"
    with pytest.raises(RecipeError):
        select_manifest(recipe, "windows", "amd64")


# -- shadows --------------------------------------------------------------------------------------
def _store() -> ShadowStore:
    return ShadowStore(max_document_bytes=200, clock=lambda: 1000.0)


def test_shadow_versions_delta_and_events():
    store = _store()
    r1 = store.update("t", "cfg", b'{"state": {"desired": {"a": 1, "n": {"x": 1, "y": 2}}}, "clientToken": "c1"}')
    assert r1.response["version"] == 1 and r1.response["clientToken"] == "c1"
    assert [t.rsplit("/", 1)[-1] for t, _ in r1.events] == ["delta", "documents", "accepted"]
    delta = json.loads(r1.events[0][1])
    assert delta["state"] == {"a": 1, "n": {"x": 1, "y": 2}} and delta["clientToken"] == "c1"
    r2 = store.update("t", "cfg", b'{"state": {"reported": {"a": 1, "n": {"x": 1}}}, "version": 1}')
    assert json.loads(r2.events[0][1])["state"] == {"n": {"y": 2}}  # the delta is still published
    r3 = store.update("t", "cfg", b'{"state": {"reported": {"n": {"y": 2}}}}')
    assert [t.rsplit("/", 1)[-1] for t, _ in r3.events] == ["documents", "accepted"]  # no delta left
    documents = json.loads(r3.events[0][1])
    assert documents["previous"]["version"] == 2 and documents["current"]["version"] == 3
    doc = store.get("t", "cfg")
    assert doc["version"] == 3 and "delta" not in doc["state"]
    r4 = store.update("t", "cfg", b'{"state": {"desired": {"a": null}, "reported": null}}')
    assert r4.response["version"] == 4
    assert store.get("t", "cfg")["state"] == {"desired": {"n": {"x": 1, "y": 2}}, "delta": {"n": {"x": 1, "y": 2}}}


def test_shadow_refusals():
    store = _store()
    with pytest.raises(ShadowRequestError) as info:
        store.get("t", "cfg")
    assert info.value.code == 404
    cases = [
        (b'{"state": {"desired": {"a": 1}}, "version": 3}', 409),
        (b'{"state": {"desired": {"a": "' + b"x" * 300 + b'"}}}', 413),
        (b"[1, 2]", 400),
        (b'{"state": {"bogus": {}}}', 400),
        (b'{"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}', 400),
        (b"", 400),
    ]
    for payload, code in cases:
        with pytest.raises(ShadowRequestError) as info:
            store.update("t", "cfg", payload)
        assert info.value.code == code, payload
    with pytest.raises(ShadowRequestError):
        store.get("t", "cfg")  # nothing was stored


def test_compute_delta_compares_nested_objects_key_by_key():
    assert compute_delta({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"b": 1, "c": [2]}, "d": 2}) == {"a": {"c": [1]}}
    assert compute_delta({"a": 1}, None) == {"a": 1}


# -- configuration store --------------------------------------------------------------------------
def test_config_store_merge_stale_writes_and_leaves():
    store = ConfigStore()
    store.set("c", {"a": {"b": 1, "c": 2}, "top": "x"}, timestamp=10.0)
    assert store.merge("c", ["a"], {"b": 5, "c": 2, "d": {"e": 1}}, timestamp=20.0) == [("a", "b"), ("a", "d", "e")]
    assert store.merge("c", [], {"a": {"b": 9}}, timestamp=15.0) == []  # older than the stored write
    assert store.get("c", ["a", "b"]) == {"b": 5}
    assert store.get("c", []) == {"a": {"b": 5, "c": 2, "d": {"e": 1}}, "top": "x"}
    with pytest.raises(KeyError):
        store.get("c", ["nope"])
