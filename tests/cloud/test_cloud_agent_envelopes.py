"""The cloud's ingest reads what a device sends: the agent's own bytes for every kind (which are the one
encoder's bytes, see tests/test_envelope_encoder.py) are stored, and the stored body is the agent's message."""

from __future__ import annotations

import json
from typing import Any

from cloud.aws import unmarshal
from cloud.ingest.handler import handler
from cloud.live_window import live_window
from cloud.tables import history_pk, history_sk
from schema.messages import BODY_TYPES, encode_envelope
from tests.cloud.cloud_support import rule_event
from tests.test_envelope_encoder import THING, agent_output, stamp


def test_ingest_stores_the_agents_bytes_of_every_kind(aws: dict[str, Any], use_env: Any) -> None:
    env = use_env("ingest")
    handed, published = agent_output()
    first = {}
    for kind, body, msg_id in handed:
        first.setdefault(kind, (body, msg_id))
    assert set(first) == {"telemetry", "cycles", "health", "alarms"}
    for kind, (body, msg_id) in first.items():
        payload = published[msg_id]
        assert payload == encode_envelope(THING, kind, body, stamp(kind, body), msg_id, packed=True)  # the default
        outcome = handler(rule_event(f"battwin/{THING}/{kind}", payload))
        assert outcome["status"] == "stored", (kind, outcome)
        assert outcome["id"] == msg_id
        key = {"pk": {"S": history_pk(THING, kind)}, "sk": {"S": history_sk(stamp(kind, body), msg_id)}}
        item = unmarshal(aws["dynamodb"].get_item(TableName=env["HISTORY_TABLE"], Key=key)["Item"])
        if kind == "telemetry":  # a compact live window of the batch (the whole batch goes to the lake)
            assert json.loads(item["body"]) == live_window(body)
        else:
            assert BODY_TYPES[kind].model_validate_json(item["body"]) == body, kind
        # a second delivery of the same bytes is recognised as the same message
        assert handler(rule_event(f"battwin/{THING}/{kind}", payload))["status"] == "duplicate", kind
    assert json.loads(published[first["alarms"][1]])["body"]["code"] == "over_temperature"
