"""Modbus battery emulator on pymodbus' own server: SunSpec (model 1 + 802) or a YAML register map.

TCP listens on 127.0.0.1 (port 0 = any free port). RTU uses two pseudo-terminal pairs joined by a
bridge thread: pymodbus' serial server opens one slave, the driver opens the other (``path``).

Registers are refreshed from the PackFeed inside the pymodbus request ``action`` callback, so every
read sees the pack as it is. Faults: ``exception`` (exception response ``exception_code``) and
``slow`` in the action; ``silence``, ``truncated``, ``garbage``, ``garbage_prefix`` and
``bad_checksum`` (RTU CRC; Modbus TCP has no checksum, so it is a no-op there) on the outgoing bytes
(pymodbus ``trace_packet``); ``implausible`` in the register values.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import select
import threading
import tty
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devkit.bms_emulators.faults import IMPLAUSIBLE_FACTOR, Fault, FaultControl
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.sunspec_model import BATTERY_OFFSET, battery_model, sunspec_image
from hardware.modbus.regmap import RegisterMap, encode_field
from hardware.simulator.state import PackState

log = logging.getLogger(__name__)

SUNSPEC_BASE = 40000


class _PtyBridge:
    """Two pty pairs; bytes written to either master are copied to the other."""

    def __init__(self) -> None:
        self.driver_master, self.driver_slave = os.openpty()
        self.server_master, self.server_slave = os.openpty()
        for fd in (self.driver_slave, self.server_slave):
            tty.setraw(fd)
        self.driver_path = os.ttyname(self.driver_slave)
        self.server_path = os.ttyname(self.server_slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modbus-rtu-bridge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        pair = {self.driver_master: self.server_master, self.server_master: self.driver_master}
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(list(pair), [], [], 0.05)
                for fd in ready:
                    data = os.read(fd, 4096)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(pair[fd], view) :]
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("modbus rtu bridge: %s", exc)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self.driver_master, self.driver_slave, self.server_master, self.server_slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class ModbusEmulator:
    def __init__(
        self,
        feed: PackFeed,
        faults: FaultControl | None = None,
        *,
        transport: Literal["tcp", "rtu"] = "tcp",
        unit: int = 1,
        regmap: RegisterMap | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        baudrate: int = 9600,
        current_sign: int = 1,
        map_ref: str | None = None,
    ) -> None:
        self.feed = feed
        self.map_ref = "sunspec" if regmap is None else (map_ref or "FILE.yaml")
        self.faults = faults or FaultControl()
        self.transport = transport
        self.unit = unit
        self.regmap = regmap
        self.host = host
        self.port = port
        self.baudrate = baudrate
        self.current_sign = current_sign
        self.last_state: PackState | None = None
        self.reads = 0
        self._fault = Fault.NONE
        self._heartbeat = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._bridge: _PtyBridge | None = None
        self.path = ""

    # -- addressing --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        query = f"unit={self.unit}&map={self.map_ref}"
        if self.transport == "tcp":
            return f"modbus-tcp://{self.host}:{self.port}?{query}"
        return f"modbus-rtu:{self.path}?baud={self.baudrate}&{query}"

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> str:
        if self._thread is not None:
            return self.url
        if self.transport == "rtu":
            self._bridge = _PtyBridge()
            self._bridge.start()
            self.path = self._bridge.driver_path
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"modbus-{self.transport}-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("modbus emulator did not start within 10 s")
        if self._error is not None:
            self.stop()
            raise RuntimeError(f"modbus emulator failed to start: {self._error}") from self._error
        log.info("modbus %s emulator: %s", self.transport, self.url)
        return self.url

    def stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._bridge is not None:
            self._bridge.stop()
            self._bridge = None

    def __enter__(self) -> ModbusEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # report start-up failures to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        device = self._device()
        server: ModbusTcpServer | ModbusSerialServer
        if self.transport == "tcp":
            server = ModbusTcpServer(device, address=(self.host, self.port), trace_packet=self._trace)
        else:
            assert self._bridge is not None
            server = ModbusSerialServer(
                device,
                framer=FramerType.RTU,
                port=self._bridge.server_path,
                baudrate=self.baudrate,
                trace_packet=self._trace,
            )
        await server.serve_forever(background=True)
        if self.transport == "tcp":
            sockets = getattr(server.transport, "sockets", None)
            if sockets:
                self.port = sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        await server.shutdown()

    # -- register image ----------------------------------------------------------------------------
    def _device(self) -> SimDevice:
        state = self.feed.state()
        if self.regmap is None:
            image = sunspec_image(state, self.current_sign)
            data = SimData(address=SUNSPEC_BASE, values=image, datatype=DataType.REGISTERS)
            return SimDevice(id=self.unit, simdata=[data], action=self._action)
        blocks: dict[str, list[SimData]] = {}
        for function in ("holding", "input"):
            specs = [s for _, s in self.regmap.named_fields() if s.function == function]
            if not specs:
                blocks[function] = [SimData(address=0, values=[0], datatype=DataType.REGISTERS)]
                continue
            low = min(s.address for s in specs)
            high = max(s.address + s.size for s in specs)
            blocks[function] = [SimData(address=low, values=[0] * (high - low), datatype=DataType.REGISTERS)]
        bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit,
            simdata=(bits, list(bits), blocks["holding"], blocks["input"]),
            action=self._action,
        )

    def _map_values(self, state: PackState) -> dict[str, list[float]]:
        temps = list(state.temperatures_c)
        values: dict[str, list[float]] = {
            "voltage_v": [state.voltage_v],
            "current_a": [state.current_a * self.current_sign],
            "soc_pct": [state.soc_pct],
            "cell_voltages_v": list(state.cell_voltages_v),
        }
        assert self.regmap is not None
        spec = self.regmap.fields.temperatures_c
        if spec is not None:
            values["temperatures_c"] = [temps[i % len(temps)] for i in range(spec.count)]
        return values

    def _fill(self, function_code: int, start_address: int, registers: list[int], state: PackState) -> None:
        if self.regmap is None:
            self._heartbeat = (self._heartbeat + 1) & 0xFFFF
            model = battery_model(state, self.current_sign, self._heartbeat)
            offset = SUNSPEC_BASE + BATTERY_OFFSET - start_address
            registers[offset : offset + len(model)] = model
            return
        function = "holding" if function_code in (3, 6, 16, 22, 23) else "input"
        values = self._map_values(state)
        for name, spec in self.regmap.named_fields():
            if spec.function != function:
                continue
            wanted = values[name][: spec.count]
            if len(wanted) != spec.count:
                log.warning("modbus emulator: %s needs %d values, pack has %d", name, spec.count, len(wanted))
                continue
            regs = encode_field(spec, wanted, self.regmap)
            offset = spec.address - start_address
            registers[offset : offset + len(regs)] = regs

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values:
            self._fault = Fault.NONE
            return None
        fault = self.faults.pick()
        self._fault = fault
        state = self.feed.state()
        if fault is Fault.IMPLAUSIBLE:
            state = dataclasses.replace(state, voltage_v=state.voltage_v * IMPLAUSIBLE_FACTOR)
        self._fill(function_code, start_address, registers, state)
        self.last_state = state
        self.reads += 1
        if fault is Fault.EXCEPTION:
            self._fault = Fault.NONE
            return ExcCodes(self.faults.exception_code)
        if fault is Fault.SLOW:
            await asyncio.sleep(self.faults.slow_delay_s)
        return None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        fault, self._fault = self._fault, Fault.NONE
        if fault is Fault.SILENCE:
            return b""
        if fault is Fault.TRUNCATED:
            return data[: len(data) // 2]
        if fault is Fault.GARBAGE:
            return self.faults.garbage(b"", low=6, high=10)
        if fault is Fault.GARBAGE_PREFIX:
            return self.faults.garbage(b"", low=6, high=10) + data
        if fault is Fault.BAD_CHECKSUM and self.transport == "rtu":
            return data[:-1] + bytes([data[-1] ^ 0x5A])
        return data
