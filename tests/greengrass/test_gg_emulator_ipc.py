"""The unmodified GreengrassCoreIPCClientV2 against the nucleus emulator, on a real Unix socket."""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
from collections.abc import Iterator

import pytest
from awsiot.eventstreamrpc import AccessDeniedError
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    ConflictError,
    InvalidArgumentsError,
    PublishMessage,
    ResourceNotFoundError,
    ServiceError,
    UnauthorizedError,
)

from devkit.nucleus import FLAVOURS, wire
from tests.greengrass.gg_support import AGENT, DELTA_TOPIC, SHADOW_PREFIX, THING, Collector, broad_recipe

SHADOW = "battwin-config"


@contextlib.contextmanager
def raises_ipc(kind: type[Exception], text: str, flavour: str = "classic") -> Iterator[None]:
    """Like pytest.raises(kind, match=text) for the IPC model's errors, whose str() is empty. Lite writes its
    error text as ``_message``, which the SDK does not read: there the error has no message at all."""
    with pytest.raises(kind) as info:
        yield
    message = getattr(info.value, "message", None)
    if flavour == "lite":
        assert message is None, message
    else:
        assert text in (message or ""), message


# -- connection -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_connect_with_good_token(emulator, ipc_client):
    assert emulator.connects == 1
    assert ipc_client.update_state(state="RUNNING") is not None
    assert emulator.component_state(AGENT) == "RUNNING"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_connect_with_bad_token_is_refused(emulator, ipc_client_factory, flavour):
    if flavour == "classic":  # a CONNECT_ACK without "accepted"
        with pytest.raises(AccessDeniedError):
            ipc_client_factory(emulator, token="not-the-svcuid")
    else:  # lite's ggipcd closes the socket without an answer ("failed authentication: invalid svcuid")
        from awscrt.exceptions import AwsCrtError

        with pytest.raises(AwsCrtError, match="AWS_IO_SOCKET_CLOSED"):
            ipc_client_factory(emulator, token="not-the-svcuid")
    assert emulator.refused == 1 and emulator.connects == 0


def _raw_exchange(path: str, messages: list[bytes], expect: int) -> list[wire.Message]:
    decoder = wire.MessageDecoder()
    out: list[wire.Message] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        for m in messages:
            s.sendall(m)
        while len(out) < expect:
            data = s.recv(65536)
            if not data:
                break
            out.extend(decoder.feed(data))
    return out


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_raw_protocol_ping_and_connect_rules(emulator, flavour):
    connect = wire.rpc_message(
        wire.MessageType.CONNECT,
        0,
        headers=[wire.Header.string(":version", "0.1.0")],
        payload=json.dumps({"authToken": emulator.svcuid}).encode(),
    )
    ping = wire.rpc_message(wire.MessageType.PING, 0, headers=[wire.Header.string("x-echo", "hi")], payload=b"p")
    ack, pong = _raw_exchange(emulator.socket_path, [connect, ping], expect=2)
    assert ack.message_type == wire.MessageType.CONNECT_ACK and ack.flags & wire.MessageFlag.CONNECTION_ACCEPTED
    assert pong.message_type == wire.MessageType.PING_RESPONSE and pong.get("x-echo") == "hi" and pong.payload == b"p"
    # anything before CONNECT is a protocol error, and the connection is closed
    (err,) = _raw_exchange(emulator.socket_path, [ping], expect=1)
    assert err.message_type == wire.MessageType.PROTOCOL_ERROR
    # a wrong protocol version is refused like a wrong token
    bad_version = wire.rpc_message(
        wire.MessageType.CONNECT,
        0,
        headers=[wire.Header.string(":version", "9.9.9")],
        payload=json.dumps({"authToken": emulator.svcuid}).encode(),
    )
    answers = _raw_exchange(emulator.socket_path, [bad_version], expect=1)
    if flavour == "lite":  # ggipcd closes the socket without an answer (ipc_server.c, handle_conn_init)
        assert answers == []
    else:
        (nack,) = answers
        assert nack.message_type == wire.MessageType.CONNECT_ACK
        assert not nack.flags & wire.MessageFlag.CONNECTION_ACCEPTED


def test_unsupported_operation_is_a_service_error(ipc_client):
    with raises_ipc(ServiceError, "not supported by the emulator"):
        ipc_client.list_components()


# -- IoT Core through mqttproxy -------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_publish_allowed_only_on_battwin_topics(emulator, ipc_client, flavour):
    ipc_client.publish_to_iot_core(topic_name=f"battwin/{THING}/telemetry", qos=QOS.AT_LEAST_ONCE, payload=b"t1")
    ipc_client.publish_to_iot_core(topic_name=f"battwin/{THING}/alarms", qos=QOS.AT_MOST_ONCE, payload=b"a1")
    # the nucleus does not scope by thing (lite 2.6.0 cannot): the core's IoT policy refuses other things' topics
    refused = ("other/topic", "battwin", f"$aws/things/{THING}/shadow/name/other/update", f"{SHADOW_PREFIX}/delete")
    for topic in refused:
        with raises_ipc(UnauthorizedError, "not authorized", flavour):
            ipc_client.publish_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=b"x")
    assert [(m.topic, m.payload, m.qos, m.component) for m in emulator.published] == [
        (f"battwin/{THING}/telemetry", b"t1", 1, AGENT),
        (f"battwin/{THING}/alarms", b"a1", 0, AGENT),
    ]
    assert [d.resource for d in emulator.denials] == list(refused)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_agent_may_not_subscribe_to_iot_core(ipc_client):
    with pytest.raises(UnauthorizedError):
        ipc_client.subscribe_to_iot_core(topic_name=f"battwin/{THING}/#", qos=QOS.AT_LEAST_ONCE)


def test_invalid_publish_topic_is_rejected(ipc_client):
    with raises_ipc(InvalidArgumentsError, "wildcards"):
        ipc_client.publish_to_iot_core(topic_name=f"battwin/{THING}/+", qos=QOS.AT_LEAST_ONCE, payload=b"x")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_subscribe_to_iot_core_receives_cloud_and_echoed_messages(make_emulator, ipc_client_factory):
    emu = make_emulator(broad_recipe())
    client = ipc_client_factory(emu)
    got = Collector()
    client.subscribe_to_iot_core(topic_name="cloud/+/commands", qos=QOS.AT_LEAST_ONCE, on_stream_event=got)
    client.subscribe_to_iot_core(topic_name=f"battwin/{THING}/#", qos=QOS.AT_LEAST_ONCE, on_stream_event=got)
    emu.deliver_from_cloud("cloud/x/commands", b"c1")
    emu.deliver_from_cloud("cloud/x/y/commands", b"not for us")
    client.publish_to_iot_core(topic_name=f"battwin/{THING}/telemetry", qos=QOS.AT_LEAST_ONCE, payload=b"echo")
    assert got.wait(2)
    assert [(e.message.topic_name, e.message.payload) for e in got.items] == [
        ("cloud/x/commands", b"c1"),
        (f"battwin/{THING}/telemetry", b"echo"),
    ]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_basic_ingest_reaches_no_subscriber_and_its_prefix_is_outside_the_topic_limit(
    make_emulator, ipc_client_factory, flavour
):
    """IoT Core hands a Basic Ingest message ($aws/rules/<rule>/<topic>) to that rule only, never to a subscriber,
    and does not count the prefix toward the 256-byte topic limit (classic's IotCoreTopicValidator strips it too)."""
    recipe = broad_recipe()
    mqtt = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]["aws.greengrass.ipc.mqttproxy"]
    mqtt["com.battwin.Test:mqtt:1"]["resources"].append("$aws/rules/#")
    emu = make_emulator(recipe)
    client = ipc_client_factory(emu)
    got = Collector()
    client.subscribe_to_iot_core(topic_name="$aws/rules/#", qos=QOS.AT_LEAST_ONCE, on_stream_event=got)
    client.subscribe_to_iot_core(topic_name=f"battwin/{THING}/#", qos=QOS.AT_LEAST_ONCE, on_stream_event=got)
    basic = f"$aws/rules/battwin_telemetry/battwin/{THING}/telemetry"
    client.publish_to_iot_core(topic_name=basic, qos=QOS.AT_LEAST_ONCE, payload=b"to the rule")
    client.publish_to_iot_core(topic_name=f"battwin/{THING}/telemetry", qos=QOS.AT_LEAST_ONCE, payload=b"echo")
    assert got.wait(1)  # the plain one's echo, queued after anything the first publish would have echoed
    assert [(e.message.topic_name, e.message.payload) for e in got.items] == [(f"battwin/{THING}/telemetry", b"echo")]
    # 248 bytes after the prefix: within the limit, though 277 with it
    inner = f"battwin/{'x' * 230}/telemetry"
    long_basic = f"$aws/rules/battwin_telemetry/{inner}"
    assert len(inner) <= 256 < len(long_basic)
    client.publish_to_iot_core(topic_name=long_basic, qos=QOS.AT_LEAST_ONCE, payload=b"long")
    assert [m.topic for m in emu.published] == [basic, f"battwin/{THING}/telemetry", long_basic]
    for too_long in (f"$aws/rules/battwin_telemetry/battwin/{'x' * 240}/telemetry", f"battwin/{'x' * 240}/telemetry/x"):
        with raises_ipc(InvalidArgumentsError, "exceeds 256 bytes", flavour):
            client.publish_to_iot_core(topic_name=too_long, qos=QOS.AT_LEAST_ONCE, payload=b"x")


# -- local pub/sub --------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_local_pubsub_with_receive_modes(make_emulator, ipc_client_factory):
    emu = make_emulator(broad_recipe())
    client = ipc_client_factory(emu)
    exact, wildcard = Collector(), Collector()
    client.subscribe_to_topic(topic="local/a", on_stream_event=exact)
    client.subscribe_to_topic(topic="local/#", on_stream_event=wildcard)
    client.publish_to_topic(
        topic="local/a", publish_message=PublishMessage(binary_message=BinaryMessage(message=b"m1"))
    )
    emu.publish_local("local/a", {"k": 2}, source="com.other.Component")
    assert exact.wait(2) and wildcard.wait(1)
    assert exact.items[0].binary_message.message == b"m1"
    assert exact.items[1].json_message.message == {"k": 2}
    # a wildcard subscription does not get the component's own messages (the nucleus' default mode)
    assert [e.json_message.message for e in wildcard.items] == [{"k": 2}]
    with pytest.raises(UnauthorizedError):
        client.subscribe_to_topic(topic="elsewhere/a")


# -- ShadowManager (classic only; the agent itself uses IoT Core's shadow topics) --------------------
#: the policy a component that uses ShadowManager IPC would carry: this thing's battwin-config shadow only
SHADOW_MANAGER_ACCESS = {
    "aws.greengrass.ShadowManager": {
        "test:shadow:1": {
            "operations": ["aws.greengrass#GetThingShadow", "aws.greengrass#UpdateThingShadow"],
            "resources": [f"$aws/things/{{iot:thingName}}/shadow/name/{SHADOW}"],
        }
    },
    "aws.greengrass.ipc.pubsub": {
        "test:pubsub:1": {
            "operations": ["aws.greengrass#SubscribeToTopic"],
            "resources": [f"$aws/things/{{iot:thingName}}/shadow/name/{SHADOW}/update/delta"],
        }
    },
}


@pytest.fixture
def shadow_emulator(make_emulator):
    return make_emulator(
        component="com.test.ShadowUser", configuration={"accessControl": SHADOW_MANAGER_ACCESS}, flavour="classic"
    )


@pytest.fixture
def shadow_client(shadow_emulator, ipc_client_factory):
    return ipc_client_factory(shadow_emulator)


def _update(client, doc, shadow=SHADOW, thing=THING):
    response = client.update_thing_shadow(thing_name=thing, shadow_name=shadow, payload=json.dumps(doc).encode())
    return json.loads(response.payload)


def test_shadow_get_update_conflict_and_size(shadow_emulator, shadow_client):
    emulator, ipc_client = shadow_emulator, shadow_client
    with pytest.raises(ResourceNotFoundError):
        ipc_client.get_thing_shadow(thing_name=THING, shadow_name=SHADOW)
    accepted = _update(ipc_client, {"state": {"reported": {"source": {"url": "simulator"}}}, "clientToken": "t-1"})
    assert accepted["version"] == 1 and accepted["clientToken"] == "t-1"
    assert accepted["state"] == {"reported": {"source": {"url": "simulator"}}}
    assert "timestamp" in accepted["metadata"]["reported"]["source"]["url"]
    accepted = _update(ipc_client, {"state": {"desired": {"source": {"url": "jbd:/dev/ttyUSB0"}}}, "version": 1})
    assert accepted["version"] == 2
    doc = json.loads(ipc_client.get_thing_shadow(thing_name=THING, shadow_name=SHADOW).payload)
    assert doc["version"] == 2
    assert doc["state"]["delta"] == {"source": {"url": "jbd:/dev/ttyUSB0"}}
    with raises_ipc(ConflictError, "Version conflict"):
        _update(ipc_client, {"state": {"reported": {"x": 1}}, "version": 1})
    with raises_ipc(InvalidArgumentsError, "maximum size"):
        _update(ipc_client, {"state": {"reported": {"blob": "x" * 9000}}})
    with pytest.raises(InvalidArgumentsError):
        ipc_client.update_thing_shadow(thing_name=THING, shadow_name=SHADOW, payload=b"not json")
    assert emulator.shadow(THING, SHADOW)["version"] == 2  # refused updates changed nothing


def test_shadow_access_is_limited_to_the_named_shadow_of_this_thing(shadow_client):
    ipc_client = shadow_client
    with pytest.raises(ResourceNotFoundError):
        ipc_client.get_thing_shadow(thing_name=THING, shadow_name=SHADOW)
    for thing, shadow in ((THING, "other-shadow"), ("other-thing", SHADOW), (THING, "")):
        with pytest.raises(UnauthorizedError):
            ipc_client.get_thing_shadow(thing_name=thing, shadow_name=shadow)
    with pytest.raises(UnauthorizedError):  # DeleteThingShadow is not in the Agent's policy
        ipc_client.delete_thing_shadow(thing_name=THING, shadow_name=SHADOW)
    with pytest.raises(UnauthorizedError):  # only the delta topic may be subscribed to
        ipc_client.subscribe_to_topic(topic=f"$aws/things/{THING}/shadow/name/{SHADOW}/update/documents")


def test_delta_is_published_on_the_local_topic(shadow_emulator, shadow_client):
    emulator, ipc_client = shadow_emulator, shadow_client
    deltas = Collector()
    _, op = ipc_client.subscribe_to_topic(topic=DELTA_TOPIC, on_stream_event=deltas)
    _update(ipc_client, {"state": {"reported": {"health": {"eol_threshold": 0.8}}}})  # no delta: none published
    _update(ipc_client, {"state": {"desired": {"health": {"eol_threshold": 0.75}}}, "clientToken": "c-2"})
    emulator.update_shadow({"state": {"desired": {"telemetry": {"decimation": 5}}}}, SHADOW)  # from the cloud
    assert deltas.wait(2)
    first, second = (json.loads(e.binary_message.message) for e in deltas.items[:2])
    assert deltas.items[0].binary_message.context.topic == DELTA_TOPIC
    assert first["state"] == {"health": {"eol_threshold": 0.75}} and first["version"] == 2
    assert first["clientToken"] == "c-2"
    assert second["state"] == {"health": {"eol_threshold": 0.75}, "telemetry": {"decimation": 5}}
    assert second["version"] == 3
    # after the client closes its stream, nothing more is sent to it
    op.close().result(5)
    assert emulator.wait_for_subscriptions("pubsub", DELTA_TOPIC, 0, exactly=True)
    later = Collector()
    ipc_client.subscribe_to_topic(topic=DELTA_TOPIC, on_stream_event=later)
    _update(ipc_client, {"state": {"desired": {"health": {"eol_threshold": 0.7}}}})
    assert later.wait(1)
    assert len(deltas.items) == 2  # events are delivered in order: the closed stream would have had it first


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_configuration_get_update_and_subscribe(emulator, ipc_client, flavour):
    whole = ipc_client.get_configuration().value
    assert "thing_name" not in whole  # the agent takes AWS_IOT_THING_NAME; lite leaves configuration as it is
    policies = whole["accessControl"]["aws.greengrass.ipc.mqttproxy"].values()
    # stored as written on both (the Agent's accessControl has no {iot:thingName}: lite 2.6.0 leaves it literal)
    assert "battwin/+/#" in {r for p in policies for r in p["resources"]}
    leaf = ipc_client.get_configuration(key_path=["health", "eol_threshold"])
    assert leaf.component_name == AGENT and leaf.value == {"eol_threshold": 0.8}
    with pytest.raises(ResourceNotFoundError):
        ipc_client.get_configuration(key_path=["no", "such", "key"])

    events = Collector()
    ipc_client.subscribe_to_configuration_update(key_path=["source"], on_stream_event=events)
    emulator.update_configuration({"source": {"sample_interval_s": 5.0}, "log_level": "DEBUG"})  # a deployment
    now = datetime.datetime.now(datetime.UTC)
    ipc_client.update_configuration(key_path=["source"], timestamp=now, value_to_merge={"url": "replay:/tmp/x.csv"})
    stale = now - datetime.timedelta(hours=1)  # an older write does not override a newer one
    ipc_client.update_configuration(key_path=["source"], timestamp=stale, value_to_merge={"url": "simulator"})
    assert events.wait(2)
    paths = [e.configuration_update_event.key_path for e in events.items]
    assert paths == [["source", "sample_interval_s"], ["source", "url"]]  # log_level is outside the key path
    source = ipc_client.get_configuration(key_path=["source"]).value
    assert source["sample_interval_s"] == 5.0 and source["url"] == "replay:/tmp/x.csv"
    assert emulator.configuration()["log_level"] == "DEBUG"


# -- forwarding to a real broker ------------------------------------------------------------------
@pytest.mark.mosquitto
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.slow
def test_forwarding_to_a_real_broker(mosquitto, subscriber_factory, make_emulator, ipc_client_factory):
    import paho.mqtt.client as paho

    cloud = subscriber_factory(mosquitto.url, f"battwin/{THING}/#")
    emu = make_emulator(broad_recipe(), forward_mqtt=mosquitto.url)
    client = ipc_client_factory(emu)
    client.publish_to_iot_core(topic_name=f"battwin/{THING}/telemetry", qos=QOS.AT_LEAST_ONCE, payload=b'{"a":1}')
    assert cloud.wait_for(lambda envs: envs == [{"a": 1}], timeout=10)
    assert [m.topic for m in emu.published] == [f"battwin/{THING}/telemetry"]
    got = Collector()
    client.subscribe_to_iot_core(topic_name="cloud/+/commands", qos=QOS.AT_LEAST_ONCE, on_stream_event=got)
    assert emu.forwarding_ready("cloud/+/commands")
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gg-test-cloud")
    pub.connect(host, int(port))
    pub.loop_start()
    try:
        pub.publish("cloud/dev1/commands", b"reboot", qos=1).wait_for_publish(10)
        assert got.wait(1, timeout=10)
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert (got.items[0].message.topic_name, got.items[0].message.payload) == ("cloud/dev1/commands", b"reboot")
