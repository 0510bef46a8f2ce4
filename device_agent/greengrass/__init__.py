"""Running the agent as AWS IoT Greengrass v2 components.

* :mod:`~device_agent.greengrass.ipc_transport` — the uplink Transport over IPC (PublishToIoTCore), which
  also carries the configuration shadow (IoT Core's shadow topics, ``device_agent.shadow.mqtt_shadow``);
* :mod:`~device_agent.greengrass.component_config` — the component configuration over IPC;
* :mod:`~device_agent.greengrass.connection` — the shared, self-healing IPC connection.

The local nucleus emulator for development and tests (``battwin gg emulate``) is a dev tool and does not
ship: ``devkit.nucleus``.

Recipes live in ``recipes/``, the GDK projects and build script in ``components/``; see docs/greengrass.md.
Importing this package does not import awsiotsdk; the modules that need it import it when used.
"""
