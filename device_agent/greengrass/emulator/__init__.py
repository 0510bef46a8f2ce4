"""A local Greengrass nucleus emulator (IPC over a Unix socket) for development and tests.

``battwin gg emulate`` runs it from the command line; tests use :class:`NucleusEmulator` directly.
It is a development tool: it is not installed as part of the edge agent's behaviour on a real core.
"""

from device_agent.greengrass.emulator.deployment import DeploymentResult, build_sources
from device_agent.greengrass.emulator.flavours import FLAVOURS, Flavour
from device_agent.greengrass.emulator.resolve import DeploymentError
from device_agent.greengrass.emulator.server import (
    SOCKET_ENV,
    TOKEN_ENV,
    Denial,
    IpcError,
    NucleusEmulator,
    PublishedMessage,
    short_socket_path,
)

__all__ = [
    "FLAVOURS",
    "SOCKET_ENV",
    "TOKEN_ENV",
    "Denial",
    "DeploymentError",
    "DeploymentResult",
    "Flavour",
    "IpcError",
    "NucleusEmulator",
    "PublishedMessage",
    "build_sources",
    "short_socket_path",
]
