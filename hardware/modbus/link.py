"""pymodbus (3.16) sync clients behind one small interface, with errors mapped to typed SourceErrors.

pymodbus does the Modbus framing, MBAP/CRC and transaction ids; this module only decides what a
failure means. pymodbus' own retries are off: the driver retries (``settings.retries``).

* connect fails / connection lost      -> SourceUnavailable
* no (valid) reply before the timeout  -> SourceTimeout when not a byte came back; when bytes came
  back, the received bytes are inspected: an RTU frame of the expected length with a wrong CRC ->
  ChecksumError, anything else (short, garbage) -> FramingError
* exception response                   -> ModbusExceptionError (a DecodeError)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU

from hardware.errors import ChecksumError, FramingError, SourceError, SourceTimeout, SourceUnavailable
from hardware.modbus.errors import ModbusExceptionError

log = logging.getLogger(__name__)

Function = Literal["holding", "input"]


TraceFn = Callable[[bool, bytes], bytes]


class ModbusLink:
    def __init__(
        self,
        make_client: Callable[[TraceFn], ModbusTcpClient | ModbusSerialClient],
        unit: int,
        rtu: bool,
        name: str,
    ) -> None:
        self.unit = unit
        self.rtu = rtu
        self.name = name
        self._rx = b""
        self.client = make_client(self._trace)

    @classmethod
    def tcp(cls, host: str, port: int, unit: int, timeout_s: float) -> ModbusLink:
        return cls(
            lambda trace: ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, trace_packet=trace),
            unit,
            rtu=False,
            name=f"{host}:{port}",
        )

    @classmethod
    def rtu_serial(cls, path: str, baudrate: int, unit: int, timeout_s: float, parity: str = "N") -> ModbusLink:
        return cls(
            lambda trace: ModbusSerialClient(
                path,
                framer=FramerType.RTU,
                baudrate=baudrate,
                parity=parity,
                timeout=timeout_s,
                retries=0,
                trace_packet=trace,
            ),
            unit,
            rtu=True,
            name=path,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx = bytes(data)  # pymodbus passes the whole receive buffer so far
        return data

    def connect(self) -> None:
        try:
            ok = self.client.connect()
        except (OSError, ModbusException) as exc:
            raise SourceUnavailable(f"modbus {self.name}: cannot connect: {exc}") from exc
        if not ok:
            raise SourceUnavailable(f"modbus {self.name}: cannot connect")

    def close(self) -> None:
        try:
            self.client.close()
        except (OSError, ModbusException) as exc:  # pragma: no cover - best effort
            log.debug("modbus %s: close: %s", self.name, exc)

    def read(self, function: Function, address: int, count: int) -> list[int]:
        self._rx = b""
        try:
            if function == "holding":
                response = self.client.read_holding_registers(address, count=count, device_id=self.unit)
            else:
                response = self.client.read_input_registers(address, count=count, device_id=self.unit)
        except ModbusIOException as exc:
            raise self._diagnose(address, count, exc) from exc
        except ConnectionException as exc:
            raise SourceUnavailable(f"modbus {self.name}: connection lost: {exc}") from exc
        except (OSError, ModbusException) as exc:
            raise SourceUnavailable(f"modbus {self.name}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise ModbusExceptionError(code, 3 if function == "holding" else 4, address, count)
        registers = list(response.registers)
        if len(registers) != count:
            raise FramingError(f"modbus {self.name}: asked for {count} registers, got {len(registers)}")
        return registers

    def _diagnose(self, address: int, count: int, exc: Exception) -> SourceError:
        rx = self._rx
        where = f"modbus {self.name} read {address}+{count}"
        if not rx:
            return SourceTimeout(f"{where}: no reply ({exc})")
        if self.rtu:
            expected_len = 5 + 2 * count  # unit, function, byte count, data, CRC16
            if len(rx) == expected_len and rx[0] == self.unit:
                crc = FramerRTU.compute_CRC(rx[:-2])
                if crc != int.from_bytes(rx[-2:], "big"):
                    return ChecksumError(f"{where}: CRC 0x{rx[-2:].hex()} != computed 0x{crc:04x}")
            return FramingError(f"{where}: {len(rx)} bytes that do not form a reply ({rx[:16].hex()}...)")
        return FramingError(f"{where}: incomplete or malformed reply ({len(rx)} bytes)")
