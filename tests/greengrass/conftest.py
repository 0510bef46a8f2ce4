"""Fixtures for the Greengrass tests: the nucleus emulator on a real Unix socket, real IPC clients."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devkit.nucleus import NucleusEmulator, short_socket_path
from tests.greengrass.gg_support import AGENT_RECIPE, THING
from tests.support import real_component


@pytest.fixture
def socket_path() -> Iterator[str]:
    path = short_socket_path("ggtest")
    yield path
    shutil.rmtree(Path(path).parent, ignore_errors=True)


@pytest.fixture
def flavour() -> str:
    """The nucleus the emulator answers like; a test runs on both with
    ``@pytest.mark.parametrize("flavour", FLAVOURS)``."""
    return "classic"


@pytest.fixture
def emulator(socket_path: str, flavour: str) -> Iterator[NucleusEmulator]:
    """The emulator serving the Agent's own recipe (its accessControl) for thing THING."""
    emu = NucleusEmulator(socket_path, THING, AGENT_RECIPE, flavour=flavour).start()
    yield emu
    emu.stop()


@pytest.fixture
def make_emulator(socket_path: str, flavour: str) -> Iterator[Callable[..., NucleusEmulator]]:
    """An emulator with a custom recipe/configuration (e.g. a broader accessControl)."""
    started: list[NucleusEmulator] = []

    def make(recipe: Any = None, **kwargs: Any) -> NucleusEmulator:
        kwargs.setdefault("flavour", flavour)
        emu = NucleusEmulator(socket_path, kwargs.pop("thing", THING), recipe, **kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
@real_component("greengrass ipc client")
def ipc_client_factory() -> Iterator[Callable[..., Any]]:
    """The unmodified GreengrassCoreIPCClientV2, connected to a socket with a token (closed afterwards)."""
    from awsiot.greengrasscoreipc import connect
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    clients: list[Any] = []

    def make(emu: NucleusEmulator, token: str | None = None) -> Any:
        ipc = connect(ipc_socket=emu.socket_path, authtoken=token or emu.svcuid, timeout=10.0)
        # one worker: stream events arrive in order (as in device_agent.greengrass.connection)
        client = GreengrassCoreIPCClientV2(client=ipc, executor=ThreadPoolExecutor(max_workers=1))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ipc_client(emulator: NucleusEmulator, ipc_client_factory: Callable[..., Any]) -> Any:
    return ipc_client_factory(emulator)


@pytest.fixture
def gg_env(emulator: NucleusEmulator, monkeypatch: pytest.MonkeyPatch) -> NucleusEmulator:
    """The process environment a component gets from the nucleus, pointing at the emulator."""
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    return emulator


@pytest.fixture
def nucleus(make_emulator: Callable[..., NucleusEmulator], tmp_path: Path) -> NucleusEmulator:
    """An emulator (of the ``flavour`` fixture's kind) that deploys into ``tmp_path/greengrass``."""
    return make_emulator(component="com.test.Host", root=tmp_path / "greengrass")
