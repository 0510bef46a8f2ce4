"""Home Assistant MQTT discovery: the topic layout and the config payload of each entity row.

Layout (``node`` = ``home_assistant.node_id``, ``pack`` = the pack's source id made topic-safe)::

    <discovery_prefix>/<sensor|binary_sensor>/<node>/<pack>_<key>/config   retained discovery config
    <state_prefix>/<node>/status                                          "online" / "offline" (the last will)
    <state_prefix>/<node>/<pack>/availability                             "online" / "offline" (the pack's source)
    <state_prefix>/<node>/<pack>/sample | health | alarms                 JSON states, one key per entity
    <discovery_prefix>/status                                             Home Assistant's birth message

Availability: every entity lists the agent's status topic (its MQTT last will: "offline" when the agent dies);
the measurements also list the pack's availability topic (offline while its source does not answer, so a
disconnected pack reads *unavailable*, not a flat line) and their own key on the state topic (unavailable while
the value is null), with ``availability_mode: all``. Full key names are used, no abbreviations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from device_agent.home_assistant.entities import EntityDescription

ONLINE = "online"
OFFLINE = "offline"

#: manufacturer and model by source URL scheme (the drivers report no identity of their own)
SOURCE_MODELS: dict[str, tuple[str, str]] = {
    "simulator": ("battwin", "Physics simulator (simulated data)"),
    "sim": ("battwin", "Physics simulator (simulated data)"),
    "replay": ("battwin", "BMS log replay"),
    "jbd": ("Jiabaida (JBD)", "JBD smart BMS"),
    "daly": ("Daly", "Daly smart BMS"),
    "jk": ("Jikong (JK)", "JK smart BMS"),
    "sbs": ("Smart Battery System", "SBS fuel gauge (SMBus)"),
    "modbus-tcp": ("Modbus", "Modbus TCP battery"),
    "modbus-rtu": ("Modbus", "Modbus RTU battery"),
    "ble": ("Bluetooth BMS", "BLE BMS (aiobmsble)"),
}

_UNSAFE = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """``jbd:ttyUSB0`` → ``jbd_ttyusb0``: a Home Assistant node/object id (``[a-zA-Z0-9_-]``)."""
    return _UNSAFE.sub("_", text.lower()).strip("_") or "battery"


def battwin_version() -> str:
    try:
        return version("battwin")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Topics:
    discovery_prefix: str
    state_prefix: str
    node_id: str

    @property
    def status(self) -> str:
        """The agent's availability (its last will)."""
        return f"{self.state_prefix}/{self.node_id}/status"

    @property
    def birth(self) -> str:
        """Home Assistant's own status: "online" when it (re)starts; discovery and states are sent again."""
        return f"{self.discovery_prefix}/status"

    def pack_base(self, pack: str) -> str:
        return f"{self.state_prefix}/{self.node_id}/{pack}"

    def pack_availability(self, pack: str) -> str:
        return f"{self.pack_base(pack)}/availability"

    def state(self, pack: str, stream: str) -> str:
        return f"{self.pack_base(pack)}/{stream}"

    def config(self, component: str, pack: str, key: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{pack}_{key}/config"


@dataclass(frozen=True)
class PackIdentity:
    """One pack as a Home Assistant device."""

    source_id: str
    thing_name: str
    simulated: bool
    #: the pack's part of topics and ids; default: the source id made safe (``jbd:ttyUSB0`` → ``jbd_ttyusb0``)
    key: str | None = None

    @property
    def pack(self) -> str:
        return self.key or slug(self.source_id)

    def device(self, node_id: str, sw_version: str) -> dict[str, Any]:
        scheme = self.source_id.split(":", 1)[0].lower()
        manufacturer, model = SOURCE_MODELS.get(scheme, ("unknown", scheme or "battery"))
        if self.simulated and "simulated" not in model:
            model += " (simulated data)"
        return {
            "identifiers": [f"battwin_{node_id}_{self.pack}"],
            "name": f"{self.thing_name} {self.source_id}",
            "manufacturer": manufacturer,
            "model": model,
            "sw_version": sw_version,
        }


def _availability(topic: str, value_template: str | None = None) -> dict[str, str]:
    entry = {"topic": topic, "payload_available": ONLINE, "payload_not_available": OFFLINE}
    if value_template is not None:
        entry["value_template"] = value_template
    return entry


def discovery_config(
    row: EntityDescription[Any], identity: PackIdentity, topics: Topics, sw_version: str
) -> tuple[str, dict[str, Any]]:
    """The discovery topic and config payload of one entity of one pack."""
    pack = identity.pack
    state_topic = topics.state(pack, row.stream)
    key = row.key
    config: dict[str, Any] = {
        "name": row.name,
        "unique_id": f"battwin_{topics.node_id}_{pack}_{key}",
        "state_topic": state_topic,
        "value_template": f"{{{{ value_json.get('{key}') }}}}",
    }
    availability = [_availability(topics.status)]
    if row.follows_pack:
        availability.append(_availability(topics.pack_availability(pack)))
        availability.append(
            _availability(state_topic, f"{{{{ '{OFFLINE}' if value_json.get('{key}') is none else '{ONLINE}' }}}}")
        )
    config["availability"] = availability
    config["availability_mode"] = "all"
    if row.component == "binary_sensor":
        config["payload_on"] = "ON"
        config["payload_off"] = "OFF"
    for name, value in (
        ("device_class", row.device_class),
        ("unit_of_measurement", row.unit),
        ("state_class", row.state_class),
        ("entity_category", row.entity_category),
        ("icon", row.icon),
        ("suggested_display_precision", row.precision),
    ):
        if value is not None:
            config[name] = value
    if row.stream != "alarms":
        config["json_attributes_topic"] = state_topic
        config["json_attributes_template"] = (
            "{{ {'simulated': value_json.get('simulated'), 'ts': value_json.get('ts')} | tojson }}"
        )
    config["device"] = identity.device(topics.node_id, sw_version)
    config["origin"] = {"name": "battwin", "sw_version": sw_version}
    return topics.config(row.component, pack, key), config
