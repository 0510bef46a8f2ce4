"""A local Greengrass nucleus emulator (IPC over a Unix socket) for development and tests.

``battwin gg emulate`` runs it from the command line; tests use :class:`NucleusEmulator` directly.
It is a development tool: it is not installed as part of the edge agent's behaviour on a real core.
"""

from devkit.nucleus.deployment import DeploymentResult, build_sources
from devkit.nucleus.flavours import FLAVOURS, Flavour
from devkit.nucleus.resolve import DeploymentError
from devkit.nucleus.server import (
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
