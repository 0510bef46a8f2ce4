"""Developer tools that never ship to a device.

* :mod:`devkit.nucleus` — a local Greengrass nucleus emulator (``battwin gg emulate``);
* :mod:`devkit.bms_emulators` — BMS protocol emulators on a pty / TCP / SMBus object (``battwin emulate``);
* :mod:`devkit.broker` — the embedded amqtt broker of the demo;
* :mod:`devkit.demo` — ``battwin demo`` (the device-only fleet; the full stack comes from ``battwin.demo``);
* :mod:`devkit.local_shadow` — IoT Core's shadow service over a local broker.

The ``battwin`` CLI reaches these through the ``battwin.cli`` entry-point group (:mod:`devkit.cli`); nothing in
``schema``, ``hardware`` or ``device_agent`` imports this package, and the Greengrass artifact leaves it out
(``components/build.py``).
"""
