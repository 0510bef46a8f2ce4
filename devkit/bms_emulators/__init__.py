"""Device emulators for every supported protocol, driven by the physics simulator.

Serial BMSs (JBD, Daly, JK) answer on a pseudo-terminal, Modbus TCP/RTU through pymodbus' own server
(RTU on a pty too), SBS through an object with smbus2's ``SMBus`` methods. Each can inject faults
(:mod:`devkit.bms_emulators.faults`), switchable while it runs. ``python -m devkit.bms_emulators.cli`` /
``battwin emulate PROTOCOL`` starts one and prints the source URL to point an agent at.
"""
