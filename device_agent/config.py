"""The agent's configuration: one pydantic model, loaded from TOML, environment and CLI flags.

Precedence, lowest first: defaults < TOML file < environment (``BATTWIN_`` prefix, ``__`` between nested
names, e.g. ``BATTWIN_MQTT__URL``) < CLI flags. The same model validates the device shadow's desired
state later, so a field is checked the same way wherever it comes from.

The thing name: an unset or empty ``BATTWIN_THING_NAME`` (and none in the TOML file or on the command line)
falls back to ``AWS_IOT_THING_NAME``, which the Greengrass nucleus (classic and lite) gives every component.
Under a nucleus (its IPC socket variable set) or with ``BATTWIN_THING_NAME`` set empty, a missing thing
name is an error rather than the development default.
"""

from __future__ import annotations

import contextvars
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from schema.source_settings import SourceSettings

#: the cloud stack's ResourcePrefix (cloud/template.yaml's AllowedPattern): its rules are <prefix>_<kind>
BASIC_INGEST_RULE_PREFIX = re.compile(r"[a-z][a-z0-9]{1,19}")
#: IoT Core's Basic Ingest topics: $aws/rules/<rule name>/<topic>
BASIC_INGEST_ROOT = "$aws/rules/"

PosFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
ThingName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9:_\-]+$")]

THING_NAME_ENV = "BATTWIN_THING_NAME"
#: the core device's thing name, set by the nucleus (classic and lite) for every component
NUCLEUS_THING_NAME_ENV = "AWS_IOT_THING_NAME"
#: set by the nucleus for every component: the agent runs under Greengrass
NUCLEUS_SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"


class ConfigError(ValueError):
    """The configuration is invalid. ``str()`` names every bad field and why."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ``[source]`` is ``schema.source_settings.SourceSettings`` (the drivers read it; it lives below them)


class MqttSettings(Section):
    url: Annotated[str, Field(pattern=r"^(mqtt|mqtts)://[^/\s]+$")] = "mqtt://127.0.0.1:1883"
    client_id: ThingName | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=1200)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=120.0)] = 5.0
    publish_timeout_s: Annotated[float, Field(gt=0.0, le=120.0)] = 10.0
    reconnect_min_s: Annotated[float, Field(gt=0.0, le=60.0)] = 0.2
    reconnect_max_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    #: publishes awaiting PUBACK at once
    inflight: Annotated[int, Field(ge=1, le=1000)] = 50
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")] = "battwin"
    #: publish through AWS IoT Core's Basic Ingest (no messaging charge): kind k goes to
    #: ``$aws/rules/<prefix>_<k>/<topic_prefix>/<thing>/<k>``, straight to the cloud stack's rule ``<prefix>_<k>``
    #: (``<prefix>`` is the stack's ``ResourcePrefix``, ``cloud/template.yaml``); None or "" = the plain topics
    #: (``<topic_prefix>/<thing>/<k>``: what a bare MQTT broker, with no rules, needs)
    basic_ingest_rule_prefix: str | None = None

    @field_validator("basic_ingest_rule_prefix", mode="before")
    @classmethod
    def _rule_prefix(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or BASIC_INGEST_RULE_PREFIX.fullmatch(value) is None:
            raise ValueError(
                "must be the cloud stack's ResourcePrefix: a lower-case letter then 1 to 19 lower-case letters or "
                "digits (the rules are named <prefix>_telemetry, <prefix>_cycles ...), or empty for plain topics"
            )
        return value

    def topic(self, thing_name: str, kind: str) -> str:
        """The topic a message of ``kind`` from ``thing_name`` is published on (plain or Basic Ingest)."""
        plain = f"{self.topic_prefix}/{thing_name}/{kind}"
        if self.basic_ingest_rule_prefix is None:
            return plain
        return f"{BASIC_INGEST_ROOT}{self.basic_ingest_rule_prefix}_{kind}/{plain}"


class IpcSettings(Section):
    """Greengrass IPC, used when the agent runs under a nucleus (see device_agent.greengrass.ipc_transport)."""

    #: publishes in flight at once, and their MQTT PUBLISH bytes: under nucleus lite's store of unacknowledged
    #: QoS 1 publishes (10 records, 15,000 B), leaving room for the nucleus' own publishers
    inflight_messages: Annotated[int, Field(ge=1, le=1000)] = 8
    inflight_bytes: Annotated[int, Field(ge=1024, le=64 * 1024**2)] = 14_000
    #: a publish still counts this long after the nucleus accepted it (lite answers before IoT Core's PUBACK)
    store_hold_s: Annotated[float, Field(ge=0.0, le=60.0)] = 0.25
    #: give up (exit non-zero, so the nucleus restarts the agent with a new SVCUID) after this many consecutive
    #: refusals of the IPC token spanning at least this long
    stale_token_refusals: Annotated[int, Field(ge=1, le=1000)] = 3
    stale_token_after_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 30.0


class TelemetrySettings(Section):
    #: a batch is published when it holds this many samples ...
    batch_max_samples: Annotated[int, Field(ge=1, le=1000)] = 60
    #: ... or when its oldest sample is this old (sample time, seconds)
    batch_max_age_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 60.0
    #: publish every n-th sample only (1 = all); the cycle tracker always sees all
    decimation: Annotated[int, Field(ge=1, le=10_000)] = 1
    #: ``packed``: a batch's samples travel zlib-compressed and base64'd (``{"zsamples": …, "n": …}``, ~1.3 KB
    #: for 60 samples of a 4S pack instead of ~11 KB: one 5 KB unit of IoT Core's bill instead of three);
    #: ``json``: the plain ``{"samples": [...]}`` (readable on the broker; what versions before 0.2 sent)
    encoding: Literal["packed", "json"] = "packed"


class TrackerSettings(Section):
    cells_series: Annotated[int, Field(ge=1, le=256)] = 1
    #: discharge capacity is counted down to the first crossing of this voltage (per cell)
    cutoff_voltage_per_cell_v: Annotated[float, Field(ge=1.5, le=4.0)] = 2.7
    #: |current| below this is rest (A)
    rest_current_a: Annotated[float, Field(gt=0.0, le=1000.0)] = 0.05
    #: a segment shorter than this is noise, not a cycle (s)
    min_segment_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 60.0
    #: a gap in samples longer than this closes the open segment (s)
    max_gap_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 600.0
    #: consecutive samples that must agree before the state changes (debounce)
    debounce_samples: Annotated[int, Field(ge=1, le=100)] = 3


class HealthSettings(Section):
    eol_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    #: rated capacity; if unset, C0 is the median of the first measured capacities
    rated_capacity_ah: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = None
    #: number of first capacities whose median is C0 when no rated capacity is set
    c0_from_first: Annotated[int, Field(ge=1, le=50)] = 5
    min_cycles_for_fit: Annotated[int, Field(ge=2, le=1000)] = 3
    #: directory with model.tflite + model.json; None = the shipped model if there is one (else physics only)
    model_dir: Path | None = None
    #: with no model_dir, use the model shipped in the package (device_agent/health/shipped_model)
    use_shipped_model: bool = True
    #: the SohModel component's artifact root: the agent loads the newest version folder under it that passes
    #: its checks and watches for newer ones (models are only loaded from inside it); None = anywhere
    model_root: Path | None = None
    #: how often the model root (or model_dir) is looked at for a new model
    model_poll_s: Annotated[float, Field(ge=0.01, le=3600.0)] = 30.0
    model_version_pin: Annotated[str, Field(max_length=64)] | None = None
    forecast_max_cycles: Annotated[int, Field(ge=10, le=1_000_000)] = 5000


class AlarmSettings(Section):
    max_temperature_c: Annotated[float, Field(ge=-40.0, le=150.0)] = 60.0
    hysteresis_c: Annotated[float, Field(ge=0.0, le=50.0)] = 5.0
    max_cell_spread_v: Annotated[float, Field(gt=0.0, le=5.0)] = 0.15


class AnomalySettings(Section):
    """The on-device anomaly detectors (``device_agent.health.anomalies``); each judges the battery against its
    own recent history. Thresholds were tuned on the NASA tuning cells named in that module."""

    enabled: bool = True
    #: discharge records remembered (bounded memory); the baseline is taken from the similar ones among them
    history_records: Annotated[int, Field(ge=4, le=1000)] = 60
    #: the baseline is the median of at most this many most recent similar discharges ...
    baseline_records: Annotated[int, Field(ge=2, le=500)] = 10
    #: ... and is not judged before this many exist
    min_baseline_records: Annotated[int, Field(ge=2, le=500)] = 5
    #: "similar": mean discharge current within this fraction of the judged record's ...
    similar_current_fraction: Annotated[float, Field(gt=0.0, le=5.0)] = 0.25
    #: ... and mean temperature within this many °C (cold blocks are not compared with warm ones)
    similar_temperature_c: Annotated[float, Field(gt=0.0, le=100.0)] = 8.0
    #: a capacity drop or resistance jump must also exceed this many robust SDs of the baseline's own scatter
    #: about its trend (a noisy measure is not judged on its noise)
    noise_sigmas: Annotated[float, Field(ge=0.0, le=100.0)] = 4.0
    #: capacity drop: raised when a complete discharge's capacity is this fraction below the baseline ...
    capacity_drop_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    #: ... and at least this many Ah below it (a cell already at a few % of its capacity is not judged on noise)
    capacity_min_drop_ah: Annotated[float, Field(ge=0.0, le=10_000.0)] = 0.05
    #: ... on this many similar discharges in a row
    capacity_confirm_records: Annotated[int, Field(ge=1, le=50)] = 2
    #: resistance jump: raised when the step resistance is this fraction above the baseline, confirmed likewise
    resistance_jump_fraction: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    resistance_confirm_records: Annotated[int, Field(ge=1, le=50)] = 2
    #: abnormal heating: raised when a discharge's temperature rise exceeds this multiple of the expected rise
    #: (the baseline's rise per mean I², times this discharge's mean I²) ...
    heating_factor: Annotated[float, Field(gt=1.0, le=100.0)] = 1.6
    #: ... and the expected rise by at least this many °C
    heating_min_excess_c: Annotated[float, Field(gt=0.0, le=100.0)] = 4.0
    #: cell drift: raised when one cell's deviation from the pack median at rest has moved this far (V) from
    #: its reference at a similar voltage
    drift_v: Annotated[float, Field(gt=0.0, le=2.0)] = 0.03
    #: rests (of at least ``drift_min_rest_s``) that make a cell's reference, and the recent rests judged
    drift_reference_rests: Annotated[int, Field(ge=1, le=100)] = 5
    drift_recent_rests: Annotated[int, Field(ge=1, le=100)] = 3
    drift_min_rest_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 300.0
    #: references are kept per band of mean cell voltage this wide (the spread depends on state of charge)
    drift_voltage_band_v: Annotated[float, Field(gt=0.0, le=5.0)] = 0.1

    @model_validator(mode="after")
    def _windows_nest(self) -> AnomalySettings:
        if self.min_baseline_records > self.baseline_records:
            raise ValueError(
                f"min_baseline_records ({self.min_baseline_records}) exceeds baseline_records ({self.baseline_records})"
            )
        if self.baseline_records > self.history_records:
            raise ValueError(
                f"baseline_records ({self.baseline_records}) exceeds history_records ({self.history_records})"
            )
        return self


class SocSettings(Section):
    """battwin's own state of charge (``device_agent.soc``, docs/soc.md) and the alarm when the BMS's differs."""

    enabled: bool = True
    #: which open-circuit-voltage table corrects the count at rest: "nmc" (NMC / NCA / LCO) or "lfp"
    chemistry: Literal["nmc", "lfp"] = "nmc"
    #: the capacity counted on until the first measured one (Ah); None = ``health.rated_capacity_ah``
    capacity_ah: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = None
    #: a rest (|current| below ``tracker.rest_current_a``) this long corrects the count from the OCV table
    rest_min_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 600.0
    #: how far a relaxed rest voltage may sit from the table (V per cell): table error plus relaxation
    ocv_sd_v: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    #: the current sensor's offset left after learning, as a fraction of 1C (0.005: 0.5 % of the capacity in
    #: A): widens the count by this much SoC per hour
    offset_sd_c: Annotated[float, Field(ge=0.0, le=1.0)] = 0.005
    #: learn the current sensor's offset from what it reads at rest, and take it off every reading
    learn_offset: bool = True
    #: the capacity's relative error: widens the count by this fraction of each Ah moved
    capacity_sd: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    #: full charge: charging at or above this voltage per cell (None: the chemistry's) with the current tapered
    #: below ``full_taper_c`` × capacity re-anchors the count at 100 %
    full_voltage_per_cell_v: Annotated[float, Field(ge=1.5, le=5.0)] | None = None
    full_taper_c: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    #: the SoC is published only while its standard deviation is at most this (pp)
    publish_max_sd_pct: Annotated[float, Field(gt=0.0, le=100.0)] = 15.0
    #: alarm ``soc_disagreement``: raised when |BMS SoC - battwin SoC| exceeds this (pp) ...
    margin_pct: Annotated[float, Field(gt=0.0, le=100.0)] = 10.0
    #: ... cleared once it is below ``margin_pct - hysteresis_pct``
    hysteresis_pct: Annotated[float, Field(ge=0.0, le=100.0)] = 3.0

    @model_validator(mode="after")
    def _clear_level(self) -> SocSettings:
        if self.hysteresis_pct >= self.margin_pct:
            raise ValueError(f"hysteresis_pct ({self.hysteresis_pct}) must be below margin_pct ({self.margin_pct})")
        return self


class SpoolSettings(Section):
    path: Path = Path("battwin-spool.db")
    max_bytes: Annotated[int, Field(ge=64 * 1024, le=64 * 1024**3)] = 64 * 1024 * 1024
    #: when full: drop the oldest messages (counted and reported) or refuse new ones
    policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    #: SQLite's durability: NORMAL may lose the last transactions on a power cut (the WAL stays consistent);
    #: FULL syncs every commit (RELIABILITY.md: for hardware without power-loss protection)
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


class ShadowSettings(Section):
    #: follow the named shadow for live configuration (IoT Core's shadow topics, over MQTT or Greengrass IPC)
    enabled: bool = True
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9:_\-]{1,64}$")] = "battwin-config"
    timeout_s: Annotated[float, Field(gt=0.0, le=120.0)] = 10.0
    #: "$aws" for IoT Core and mosquitto; amqtt refuses '$' topics from clients, so use e.g. "local-aws" there
    topic_root: Annotated[str, Field(pattern=r"^\$?[A-Za-z0-9_\-]{1,32}$")] = "$aws"


#: an MQTT topic level list without wildcards or empty levels (``homeassistant``, ``home/battwin``)
TopicPrefix = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")]


class HomeAssistantSettings(Section):
    """Optional output to Home Assistant through MQTT discovery on a local broker (``device_agent.home_assistant``;
    docs/home_assistant.md). Off by default: nothing connects to a local broker unless ``enabled``."""

    enabled: bool = False
    #: the local broker Home Assistant listens to (its Mosquitto add-on, usually), not the AWS uplink
    url: Annotated[str, Field(pattern=r"^(mqtt|mqtts)://[^/\s]+$")] = "mqtt://127.0.0.1:1883"
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password: SecretStr | None = None
    #: TLS (``mqtts://`` only): a CA to trust instead of the system's, and a client certificate + key
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: MQTT client id on the local broker; None = ``battwin-ha-<node_id>``
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")] | None = None
    #: Home Assistant's discovery prefix (its MQTT integration's setting; ``homeassistant`` unless changed there)
    discovery_prefix: TopicPrefix = "homeassistant"
    #: where the states and availability are published: ``<state_prefix>/<node_id>/...``
    state_prefix: TopicPrefix = "battwin-ha"
    #: the node id in discovery topics and unique ids; None = the thing name with other characters as ``_``
    node_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")] | None = None
    #: retain the discovery configs (Home Assistant finds the entities again after its own restart)
    retain_discovery: bool = True
    #: retain the states (Home Assistant shows the last value at once after its restart)
    retain_state: bool = True
    keepalive_s: Annotated[int, Field(ge=5, le=1200)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=120.0)] = 5.0
    reconnect_min_s: Annotated[float, Field(gt=0.0, le=60.0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 60.0
    #: the agent hands states to the publisher through a queue this long; past it they are dropped (counted)
    queue_size: Annotated[int, Field(ge=16, le=100_000)] = 1000

    @model_validator(mode="after")
    def _consistent(self) -> HomeAssistantSettings:
        if self.password is not None and self.username is None:
            raise ValueError("password is set without a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its key)")
        tls_files = [name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is not None]
        if tls_files and not self.url.startswith("mqtts://"):
            raise ValueError(f"{', '.join(tls_files)} set but url {self.url!r} is not mqtts:// (TLS)")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) exceeds reconnect_max_s ({self.reconnect_max_s})"
            )
        return self


#: separates the core's thing name from a pack's id in the pack's thing name (``core-7.pack-a``): AWS IoT thing
#: names cannot contain ".", so a pack's name can never be another registered thing's name (see docs/greengrass.md)
PACK_SEPARATOR = "."
PackId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")]
#: the sections a pack may override (only the fields it names; the rest come from the agent's own section)
PACK_OVERRIDABLE = ("source", "tracker", "health", "alarms", "anomalies", "telemetry")
#: schemes whose packs may share one device path, told apart by this URL option (a bus address)
BUS_ADDRESSED = {"modbus-rtu": ("unit", "1"), "sbs": ("address", "0x0b")}
_NO_BUS_REASON = {
    "daly": "its address option selects the host port (0x40 RS485 / 0x80 UART), not a pack",
    "jbd": "its protocol has no pack address",
    "jk": "its protocol has no pack address",
}


class PackSettings(Section):
    """One pack of a multi-pack agent (``[[packs]]``): its own source, thing name, spool file and twin."""

    #: the pack's thing name is ``<thing_name>.<id>``
    id: PackId
    #: the pack's source URL (as ``source.url``): ``jbd:/dev/ttyUSB0``, ``modbus-rtu:/dev/ttyUSB1?unit=3`` ...
    url: Annotated[str, Field(min_length=1, max_length=1024)]
    source: dict[str, Any] = Field(default_factory=dict)
    tracker: dict[str, Any] = Field(default_factory=dict)
    health: dict[str, Any] = Field(default_factory=dict)
    alarms: dict[str, Any] = Field(default_factory=dict)
    anomalies: dict[str, Any] = Field(default_factory=dict)
    telemetry: dict[str, Any] = Field(default_factory=dict)


class BankSettings(Section):
    """How the packs of a multi-pack agent are wired together, for the bank view (device_agent.bank)."""

    arrangement: Literal["parallel", "series"] = "parallel"
    #: how often the bank view is computed, logged and written to ``status_path`` (seconds)
    interval_s: Annotated[float, Field(ge=1.0, le=86_400.0)] = 60.0
    #: the latest bank view as JSON; None = ``bank.json`` beside the spool
    status_path: Path | None = None


class _DropEmptyThingName(PydanticBaseSettingsSource):
    """The environment source, with an empty ``BATTWIN_THING_NAME`` treated as unset."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = self._inner()
        if values.get("thing_name") == "":
            values = {k: v for k, v in values.items() if k != "thing_name"}
        return values


class _EnvSource(EnvSettingsSource):
    """The environment, with an empty ``BATTWIN_PACKS`` read as no packs (a nucleus may render an empty list so)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name == "packs" and isinstance(value, str) and not value.strip():
            return []
        return super().decode_complex_value(field_name, field, value)


class _NucleusThingName(PydanticBaseSettingsSource):
    """``thing_name`` from ``AWS_IOT_THING_NAME`` (the lowest-priority source above the defaults)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get(NUCLEUS_THING_NAME_ENV, "")
        return {"thing_name": value} if value else {}


class AgentConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BATTWIN_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    thing_name: ThingName = "battwin-sim-1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    source: SourceSettings = Field(default_factory=SourceSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ipc: IpcSettings = Field(default_factory=IpcSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    anomalies: AnomalySettings = Field(default_factory=AnomalySettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    soc: SocSettings = Field(default_factory=SocSettings)
    home_assistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    packs: list[PackSettings] = Field(default_factory=list, max_length=64)
    bank: BankSettings = Field(default_factory=BankSettings)

    @model_validator(mode="after")
    def _packs_valid(self) -> AgentConfig:
        if self.packs:
            problems = pack_problems(self)
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _TOML_PATH.get()
        env = _EnvSource(settings_cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, _DropEmptyThingName(settings_cls, env)]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        sources.append(_NucleusThingName(settings_cls))
        return tuple(sources)


_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("battwin_toml", default=None)


def format_validation_error(exc: ValidationError, origin: str = "config") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{origin}: {loc}: {err['msg']} (got {shown})")
    return lines


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Load and validate; raise ConfigError naming each bad field."""
    toml: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist or is not a file")
        try:
            with path.open("rb") as fh:
                toml = tomllib.load(fh)  # syntax check with a clear message before pydantic-settings reads it
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read: {exc}") from None
    _check_thing_name_source(toml, overrides or {})
    token = _TOML_PATH.set(path)
    try:
        return AgentConfig(**(overrides or {}))
    except ValidationError as exc:
        lines = format_validation_error(exc, str(path) if path else "config")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines), lines) from None
    except SettingsError as exc:  # e.g. BATTWIN_PACKS that is not JSON
        raise ConfigError(f"invalid configuration: {exc}: {exc.__cause__ or ''}".rstrip(": ")) from None
    finally:
        _TOML_PATH.reset(token)


def _check_thing_name_source(toml: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Under a nucleus, or with ``BATTWIN_THING_NAME`` set empty, the thing name must come from somewhere:
    the development default would publish under a name the nucleus does not authorise."""
    asked = os.environ.get(THING_NAME_ENV) == "" or bool(os.environ.get(NUCLEUS_SOCKET_ENV))
    given = (
        overrides.get("thing_name")
        or os.environ.get(THING_NAME_ENV)
        or toml.get("thing_name")
        or os.environ.get(NUCLEUS_THING_NAME_ENV)
    )
    if asked and not given:
        message = (
            f"thing_name: no thing name: {THING_NAME_ENV} is unset or empty and {NUCLEUS_THING_NAME_ENV} "
            "(which the Greengrass nucleus sets) is not set either"
        )
        raise ConfigError(message)


def pack_thing_name(core_thing: str, pack_id: str) -> str:
    return f"{core_thing}{PACK_SEPARATOR}{pack_id}"


def pack_spool_path(core_spool: Path, pack_id: str) -> Path:
    """``/var/lib/battwin/spool.db`` → ``/var/lib/battwin/spool.<id>.db``: one SQLite file per pack."""
    return core_spool.with_name(f"{core_spool.stem}{PACK_SEPARATOR}{pack_id}{core_spool.suffix or '.db'}")


def pack_config(core: AgentConfig, pack: PackSettings) -> AgentConfig:
    """The configuration of one pack's agent: the core's, with the pack's URL, thing name, spool file (and its
    share of ``spool.max_bytes``) and the section fields the pack overrides. Raises ValueError (naming the
    field) for a bad override."""
    update: dict[str, Any] = {}
    for name in PACK_OVERRIDABLE:
        base: BaseModel = getattr(core, name)
        override = dict(getattr(pack, name))
        if name == "source":
            override["url"] = pack.url
        if not override:
            continue
        try:
            update[name] = type(base).model_validate({**base.model_dump(), **override})
        except ValidationError as exc:
            lines = format_validation_error(exc, f"packs[{pack.id}].{name}")
            raise ValueError("; ".join(lines)) from None
    share = core.spool.max_bytes // max(1, len(core.packs))
    update["spool"] = core.spool.model_copy(
        update={"path": pack_spool_path(core.spool.path, pack.id), "max_bytes": share}
    )
    update["thing_name"] = pack_thing_name(core.thing_name, pack.id)
    update["packs"] = []
    return core.model_copy(update=update)


def pack_problems(core: AgentConfig) -> list[str]:
    """What is wrong with the ``packs`` list, each naming the pack(s) and why (empty: nothing)."""
    from schema.source_settings import SourceConfigError, parse_source_url

    problems: list[str] = []
    seen: dict[str, str] = {}
    devices: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for pack in core.packs:
        key = pack.id.lower()  # one spool file per pack: ids that differ only in case collide on some disks
        if key in seen:
            problems.append(f"packs: id {pack.id!r} is used twice (ids must differ, ignoring case)")
            continue
        seen[key] = pack.id
        thing = pack_thing_name(core.thing_name, pack.id)
        if len(thing) > 128:
            problems.append(f"packs[{pack.id}]: thing name {thing!r} is longer than 128 characters")
        try:
            url = parse_source_url(pack.url)
        except SourceConfigError as exc:
            problems.append(f"packs[{pack.id}].url: {exc}")
            continue
        try:
            pack_config(core, pack)
        except ValueError as exc:
            problems.append(str(exc))
        if url.host is not None:
            device = (f"{url.host}:{url.port}", url.query.get("unit", "1"))
            devices.setdefault(("net", device[0] + "#" + device[1]), []).append((pack.id, url.scheme, ""))
        elif url.path and url.scheme not in ("simulator", "sim", "replay"):
            option, default = BUS_ADDRESSED.get(url.scheme, ("", ""))
            address = (
                str(int(url.query.get(option, default), 0))
                if option and _is_int(url.query.get(option, default))
                else ""
            )
            devices.setdefault(("dev", url.path), []).append((pack.id, url.scheme, address))
    share = core.spool.max_bytes // max(1, len(core.packs))
    if share < 64 * 1024:
        problems.append(
            f"spool.max_bytes: {core.spool.max_bytes} bytes shared by {len(core.packs)} packs leaves {share} each "
            "(at least 65536 per pack)"
        )
    for (kind, where), users in devices.items():
        if len(users) < 2:
            continue
        ids = ", ".join(repr(u[0]) for u in users)
        if kind == "net":
            problems.append(f"packs {ids} read the same network device and unit {where!r}")
            continue
        schemes = {u[1] for u in users}
        if len(schemes) > 1:
            problems.append(f"packs {ids} share {where} with different drivers ({', '.join(sorted(schemes))})")
            continue
        scheme = next(iter(schemes))
        if scheme not in BUS_ADDRESSED:
            why = _NO_BUS_REASON.get(scheme, "the driver has no bus address")
            problems.append(
                f"packs {ids} share the serial device {where}: {scheme} reads one pack per device ({why}); "
                "give each pack its own adapter"
            )
            continue
        addresses = [u[2] for u in users]
        option = BUS_ADDRESSED[scheme][0]
        if len(set(addresses)) < len(addresses):
            problems.append(
                f"packs {ids} share {where} with the same {option}: each pack on a bus needs its own {option}"
            )
    return problems


def _is_int(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


def set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_nested(d, "mqtt.url", v)`` → ``d["mqtt"]["url"] = v`` (for CLI flags)."""
    keys = dotted.split(".")
    node = target
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
