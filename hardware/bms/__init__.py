"""Drivers for UART/RS485 battery management systems: JBD/Xiaoxiang, Daly, JK (4E 57).

Each family has three modules with one job each: ``framing`` (bytes on the wire), ``decode`` (a pure
function from a frame or payload to a frozen dataclass with units in the field names) and ``driver``
(the :class:`~hardware.source.Source` that talks to a port and turns decoded values into a Sample).
"""
