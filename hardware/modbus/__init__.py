"""Modbus TCP/RTU battery sources (pymodbus): SunSpec model 802 discovery, or a user YAML register map."""
