"""Modbus sources.

``modbus-tcp://host:502?unit=1&map=sunspec`` and ``modbus-rtu:/dev/ttyUSB0?baud=9600&unit=1&map=FILE.yaml``.

``map=sunspec`` (default): SunSpec discovery on connect (marker at 40000, 0 or 50000), then each poll
reads the 64 registers of model 802 in one request. SunSpec 802 has no per-cell voltages and no
temperatures; the Sample carries pack voltage, current and SoC. Plausibility: CellVMax/CellVMin must be
within the cell limits; the pack voltage is checked against ``cells=`` when given.
``current_sign=1|-1`` (default 1) maps the model's ``A`` to positive = charging.

``map=FILE.yaml`` or ``map=NAME`` (a file in hardware/modbus/maps): see :mod:`hardware.modbus.regmap`.

RTU options: ``baud`` (9600), ``parity`` (N|E|O). Both: ``unit`` (1), plus the common options.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from hardware.bms.options import DriverOptions, make_source_id, parse_common_options
from hardware.bms.polling import PolledSource, build_sample
from hardware.errors import DecodeError, ImplausibleValueError, SourceConfigError
from hardware.modbus.link import ModbusLink
from hardware.modbus.regmap import RegisterMap, decode_map, load_map, plan_reads
from hardware.modbus.sunspec import MODEL_802_SIZE, MODEL_BATTERY, decode_model_802, find_models
from schema.messages import Sample
from schema.source_settings import SourceSettings, SourceUrl

DEFAULT_PORT = 502
DEFAULT_UNIT = 1
DEFAULT_BAUD = 9600


class ModbusSource(PolledSource):
    def __init__(
        self,
        source_id: str,
        link_factory: Callable[[], ModbusLink],
        options: DriverOptions,
        *,
        regmap: RegisterMap | None = None,
        current_sign: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source_id, options, clock)
        if current_sign not in (1, -1):
            raise SourceConfigError("modbus current_sign must be 1 or -1")
        self._link_factory = link_factory
        self._link: ModbusLink | None = None
        self.regmap = regmap
        self.current_sign = current_sign
        self.model_802_address: int | None = None

    @property
    def link(self) -> ModbusLink:
        if self._link is None:  # pragma: no cover - poll() connects first
            raise RuntimeError("not connected")
        return self._link

    def _connect(self) -> None:
        link = self._link_factory()
        link.connect()
        self._link = link
        if self.regmap is None:
            try:
                _, models = find_models(lambda address, count: link.read("holding", address, count))
            except Exception:
                link.close()
                self._link = None
                raise
            if MODEL_BATTERY not in models:
                link.close()
                self._link = None
                raise DecodeError(f"sunspec: no battery model 802 (models found: {sorted(models)})")
            self.model_802_address = models[MODEL_BATTERY]

    def _disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _read(self) -> Sample:
        if self.regmap is None:
            return self._read_sunspec()
        return self._read_map(self.regmap)

    def _read_sunspec(self) -> Sample:
        assert self.model_802_address is not None
        battery = decode_model_802(self.link.read("holding", self.model_802_address, MODEL_802_SIZE))
        if battery.voltage_v is None or battery.current_a is None:
            raise DecodeError("sunspec 802: V or A not implemented by the device")
        limits = self.options.limits
        for name, value in (("CellVMax", battery.cell_voltage_max_v), ("CellVMin", battery.cell_voltage_min_v)):
            if value is not None and not limits.cell_voltage_min_v <= value <= limits.cell_voltage_max_v:
                raise ImplausibleValueError(f"sunspec 802: {name} {value} V outside cell limits")
        return build_sample(
            self,
            voltage_v=battery.voltage_v,
            current_a=battery.current_a * self.current_sign + 0.0,
            soc_pct=battery.soc_pct,
        )

    def _read_map(self, regmap: RegisterMap) -> Sample:
        registers: dict[tuple[str, int], int] = {}
        for block in plan_reads(regmap):
            values = self.link.read(block.function, block.address, block.count)
            registers.update(((block.function, block.address + i), v) for i, v in enumerate(values))
        reading = decode_map(regmap, registers)
        return build_sample(
            self,
            voltage_v=reading.voltage_v,
            current_a=reading.current_a,
            temperatures_c=reading.temperatures_c,
            soc_pct=reading.soc_pct,
            cell_voltages_v=reading.cell_voltages_v,
        )


def _map_and_options(
    url: SourceUrl, settings: SourceSettings, extra: set[str]
) -> tuple[RegisterMap | None, DriverOptions]:
    options = parse_common_options(url, settings, extra_options=extra | {"unit", "map", "current_sign"})
    map_ref = url.option("map", "sunspec") or "sunspec"
    regmap = None if map_ref == "sunspec" else load_map(map_ref)
    if regmap is not None and regmap.cells is not None:
        if options.limits.cells is not None and options.limits.cells != regmap.cells:
            raise SourceConfigError(
                f"source URL {url.raw!r}: cells={options.limits.cells} but the map says {regmap.cells}"
            )
        options = replace(options, limits=replace(options.limits, cells=regmap.cells))
    return regmap, options


def _unit(url: SourceUrl) -> int:
    unit = url.int_option("unit", DEFAULT_UNIT)
    if not 0 <= unit <= 247:
        raise SourceConfigError(f"source URL {url.raw!r}: unit must be 0..247")
    return unit


def _sign(url: SourceUrl) -> int:
    sign = url.int_option("current_sign", 1)
    if sign not in (1, -1):
        raise SourceConfigError(f"source URL {url.raw!r}: current_sign must be 1 or -1")
    return sign


def create_tcp(url: SourceUrl, settings: SourceSettings) -> ModbusSource:
    if not url.host:
        raise SourceConfigError(f"source URL {url.raw!r}: missing host (modbus-tcp://host:502?unit=1)")
    regmap, options = _map_and_options(url, settings, set())
    host, port, unit = url.host, url.port or DEFAULT_PORT, _unit(url)
    return ModbusSource(
        make_source_id("modbus-tcp", host, port, f"u{unit}"),
        lambda: ModbusLink.tcp(host, port, unit, options.timeout_s),
        options,
        regmap=regmap,
        current_sign=_sign(url),
    )


def create_rtu(url: SourceUrl, settings: SourceSettings) -> ModbusSource:
    if not url.path:
        raise SourceConfigError(f"source URL {url.raw!r}: missing serial device (modbus-rtu:/dev/ttyUSB0)")
    regmap, options = _map_and_options(url, settings, {"baud", "parity"})
    path, unit = url.path, _unit(url)
    baud = url.int_option("baud", DEFAULT_BAUD)
    parity = (url.option("parity", "N") or "N").upper()
    if parity not in ("N", "E", "O"):
        raise SourceConfigError(f"source URL {url.raw!r}: parity must be N, E or O")
    return ModbusSource(
        make_source_id("modbus-rtu", path, f"u{unit}"),
        lambda: ModbusLink.rtu_serial(path, baud, unit, options.timeout_s, parity),
        options,
        regmap=regmap,
        current_sign=_sign(url),
    )
