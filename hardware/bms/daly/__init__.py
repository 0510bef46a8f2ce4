"""Daly "smart BMS" UART/RS485 protocol (A5 ... 13-byte frames)."""
