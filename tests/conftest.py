"""Shared fixtures: real brokers (mosquitto, embedded amqtt), an independent subscriber (paho), data paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI, REAL_COMPONENT_ATTR, SLOW_FIXTURE_ATTR, free_port, real_component, wait_port


class Mosquitto:
    """A real mosquitto on a free loopback port; can be stopped and restarted on the same port."""

    def __init__(self, workdir: Path, extra_conf: str = "", persistent: bool = False) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        persistence = (
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            if persistent
            else "persistence false\n"
        )
        # as root, mosquitto drops to user "mosquitto", which cannot read the test's private tmp dir
        self.user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{self.user}listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}"
            f"max_queued_messages 1000000\nmax_inflight_messages 0\n{extra_conf}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def require_mosquitto() -> None:
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed, and CI=true requires it (.ci/run installs it with apt)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); these tests need a real broker")


@pytest.fixture
@real_component("mosquitto")
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    require_mosquitto()
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def amqtt_broker() -> Iterator[Any]:
    from devkit.broker.embedded import EmbeddedBroker

    broker = EmbeddedBroker().start()
    yield broker
    broker.stop()


class Subscriber:
    """An independent MQTT client (paho) that records every message on a filter."""

    def __init__(self, url: str, topic: str = "battwin/#", persistent_session: bool = False) -> None:
        import paho.mqtt.client as paho

        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{time.monotonic_ns()}",
            clean_session=not persistent_session,
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscriber could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def envelopes(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            out = [json.loads(p) for _, p in self.messages]
        return [e for e in out if kind is None or e["kind"] == kind]

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.envelopes()):
                return True
            time.sleep(0.05)
        return pred(self.envelopes())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[[str], Subscriber]]:
    subs: list[Subscriber] = []

    def make(url: str, topic: str = "battwin/#", persistent_session: bool = False) -> Subscriber:
        sub = Subscriber(url, topic, persistent_session)
        subs.append(sub)
        return sub

    yield make
    for s in subs:
        s.close()


# -- tiers: which real components each collected test starts (tests/test_tiers.py reads this) -----------------
TIER_REPORT_ENV = "BATTWIN_TIER_REPORT"
_ALL_COLLECTED = pytest.StashKey[dict[str, list[str]]]()
_KEEP_QUICK_SLOW = pytest.StashKey[list[str]]()


def _fixture_funcs(item: pytest.Item) -> list[Any]:
    """The functions of every fixture in the item's closure (with the fixtures they override)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [fixturedef.func for defs in info.name2fixturedefs.values() for fixturedef in defs]


def real_components_of(item: pytest.Item) -> list[str]:
    """The real components (``@real_component`` fixtures) in the item's fixture closure."""
    found = {name for func in _fixture_funcs(item) if (name := getattr(func, REAL_COMPONENT_ATTR, None)) is not None}
    return sorted(found)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: a test on a @slow_fixture is slow like a marked one
def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None and any(
            getattr(func, SLOW_FIXTURE_ATTR, False) for func in _fixture_funcs(item)
        ):
            item.add_marker(pytest.mark.slow)
    if os.environ.get(TIER_REPORT_ENV):  # the complete suite
        session.stash[_ALL_COLLECTED] = {item.nodeid: real_components_of(item) for item in items}
        session.stash[_KEEP_QUICK_SLOW] = sorted(
            item.nodeid for item in items if item.get_closest_marker("slow") and item.get_closest_marker("keep_quick")
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    out = os.environ.get(TIER_REPORT_ENV)
    if out:
        report = {
            "collected": session.stash.get(_ALL_COLLECTED, {}),
            "selected": {item.nodeid: real_components_of(item) for item in session.items},
            "slow": sorted(item.nodeid for item in session.items if item.get_closest_marker("slow")),
            "keep_quick_slow": session.stash.get(_KEEP_QUICK_SLOW, []),
        }
        Path(out).write_text(json.dumps(report, indent=1), encoding="utf-8")


# -- keeping the slow marker honest: a test not marked slow whose own run (call) took long is named at the end
# of the session (a note for whoever runs `make quick`, never a failure: timing does not decide pass/fail)
SLOW_NOTE_S = 5.0
_UNMARKED_LONG = pytest.StashKey[list[tuple[str, float]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    started = time.monotonic()
    try:
        return (yield)
    finally:
        took = time.monotonic() - started
        if took > SLOW_NOTE_S and not any(item.get_closest_marker(m) for m in ("slow", "keep_quick")):
            item.config.stash.setdefault(_UNMARKED_LONG, []).append((item.nodeid, took))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    long = config.stash.get(_UNMARKED_LONG, [])
    if long:
        terminalreporter.section("tests not marked slow that ran long (mark them @pytest.mark.slow?)")
        for nodeid, took in sorted(long, key=lambda x: -x[1]):
            terminalreporter.write_line(f"{took:6.1f} s  {nodeid}")
