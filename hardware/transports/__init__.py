"""Byte transports shared by the wired BMS drivers: serial ports, stream framing, request/reply links."""
