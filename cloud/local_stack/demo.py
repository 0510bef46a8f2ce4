"""``battwin demo``, full stack: the device fleet, the cloud back end emulated locally, and the dashboard.

One process, loopback only::

    agents ──MQTT──► broker (embedded amqtt | mosquitto) ──► LocalRulesRunner (the template's IoT rules)
      ▲                 │                                         │ same event as the rule SQL produces
      │ shadow          ▼                                         ▼
      └──────── LocalShadowService                        ingest handler ──► moto: DynamoDB + S3
                        ▲                                                        │
                        │ desired config                                         ▼
                   dashboard ◄──────────── API handler (in process) ◄────────────┘

``run_full_demo`` is the ``battwin.demo`` entry point's target (``full``): ``devkit.demo.run_demo``
calls it with its own arguments when the cloud package is installed.

With ``broker_url=mqtts://…`` (AWS IoT Core) nothing of the cloud is emulated: the agents connect with
their own certificates (``cert_dir/<thing>/certificate.pem.crt`` + ``private.pem.key``), IoT Core serves the
shadows and runs the deployed rules, and the dashboard reads the deployed API (``api_url``) and edits
shadows through the IoT data plane.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cloud.api.handler import Api
from cloud.dashboard.api_client import ApiClient, HttpApi, InProcessApi
from cloud.dashboard.server import Dashboard, DashboardServer
from cloud.dashboard.shadow_control import IotDataShadowControl, MqttShadowControl, ShadowControl
from cloud.local_stack.aws_local import LocalAws
from cloud.local_stack.fleet import (
    DEFAULT_REPLAY_LOG,
    EMULATED_BMS,
    SHARED_DATA,
    Connection,
    Member,
    bank_member,
    emulated_bms_member,
    model_root,
    replay_agent_member,
    replay_member,
    simulated_member,
)
from cloud.local_stack.local_train import NASA_HISTORY_CELLS, LocalRetrainLoop, seed_lake_with_cells
from cloud.local_stack.rules import LocalRulesRunner
from device_agent.shadow.topics import AMQTT_ROOT, AWS_ROOT
from devkit.broker.embedded import EmbeddedBroker
from devkit.demo import FLEET, FleetMonitor, ThingView
from devkit.local_shadow import LocalShadowService

log = logging.getLogger("battwin.local_stack")

#: simulated and accelerated clocks run far ahead of the wall clock; the local ingest accepts that (see docs)
DEMO_MAX_CLOCK_SKEW_S = 10 * 365.25 * 86_400.0
DEFAULT_DASHBOARD_PORT = 8090


@dataclass
class StackOptions:
    batteries: int = 4
    #: packs of the multi-pack core (0: none)
    bank_packs: int = 0
    acceleration: float = 2000.0
    ageing: float = 1.0
    broker_url: str | None = None
    workdir: Path | None = None
    emulator: bool = True
    replay_log: Path | None = DEFAULT_REPLAY_LOG
    replay_rate_hz: float = 200.0
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    poll_ms: int = 1500
    rules_workers: int = 3
    #: the dashboard's "Retrain now" (cloud.local_stack.local_train); the job's interpreter needs the ml extra
    #: (tensorflow): BATTWIN_TRAIN_PYTHON, else this interpreter
    retrain: bool = True
    train_python: str | None = None
    #: real NASA cells put into the lake at start as the fleet's history (from the lab data, when present), so
    #: that "Retrain now" has enough measured fades to train on and to score a held-out cell
    lake_history: bool = True
    # AWS IoT Core (broker_url mqtts://…)
    cert_dir: Path | None = None
    ca_file: Path | None = None
    api_url: str | None = None
    api_auth: Literal["none", "iam"] = "iam"

    @property
    def iot_core(self) -> bool:
        return bool(self.broker_url and self.broker_url.startswith("mqtts://"))


class LocalStack:
    """Starts and stops everything of the demo in order; usable as a context manager (tests do)."""

    def __init__(self, options: StackOptions) -> None:
        if not 0 <= options.batteries <= len(FLEET):
            raise ValueError(f"batteries must be 0..{len(FLEET)}")
        self.options = options
        self.stop_event = threading.Event()
        self.broker: EmbeddedBroker | None = None
        self.aws: LocalAws | None = None
        self.rules: LocalRulesRunner | None = None
        self.shadows: LocalShadowService | None = None
        self.monitor: FleetMonitor | None = None
        self.dashboard: DashboardServer | None = None
        self.retrain: LocalRetrainLoop | None = None
        self.members: list[Member] = []
        self.threads: list[threading.Thread] = []
        self.broker_url = options.broker_url or ""
        self.shadow_root = AWS_ROOT
        self.notes: list[str] = []
        self._own_dir = options.workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="battwin-stack-")) if options.workdir is None else options.workdir
        self._stoppers: list[Callable[[], None]] = []

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        opts = self.options
        self.workdir.mkdir(parents=True, exist_ok=True)
        if opts.broker_url is None:
            self.broker = EmbeddedBroker().start()
            self._stoppers.append(self.broker.stop)
            self.broker_url = self.broker.url
            # amqtt refuses client publishes to '$' topics: the embedded broker gets the shadow topics elsewhere
            self.shadow_root = AMQTT_ROOT
        api: ApiClient | None = None
        shadow_control: ShadowControl | None = None
        if not opts.iot_core:
            self.aws = LocalAws().start()
            self._stoppers.append(self.aws.stop)
            self.aws.create_resources()
            self.rules = self._rules_runner(self.aws)
            self._stoppers.append(self.rules.stop)
            self.shadows = LocalShadowService(
                self.broker_url, path=self.workdir / "shadows.json", topic_root=self.shadow_root
            ).start()
            self._stoppers.append(self.shadows.stop)
            api = InProcessApi(
                Api(
                    self.aws.names.device_state_table,
                    self.aws.names.history_table,
                    dynamodb=self.aws.client("dynamodb"),
                ),
                description=f"API handler in process, DynamoDB on moto ({self.aws.endpoint})",
            )
            if opts.dashboard:
                shadow_control = MqttShadowControl(self.broker_url, topic_root=self.shadow_root)
        else:
            if opts.api_url:
                api = HttpApi(opts.api_url, auth=opts.api_auth)
            if opts.dashboard and api is not None:
                shadow_control = IotDataShadowControl()
        conn = Connection(self.broker_url, self.shadow_root, ca_file=opts.ca_file, cert_dir=opts.cert_dir)
        self._build_fleet(conn)
        if not opts.iot_core:  # IoT Core's device policy allows no fleet-wide subscriber
            self.monitor = FleetMonitor(self.broker_url)
            self.monitor.start()
            self._stoppers.append(self.monitor.stop)
            for m in self.members:
                for thing in m.things:
                    self.monitor.things.setdefault(thing, ThingView()).stress = m.stress
        if opts.dashboard and api is not None:
            app = Dashboard(api, shadow_control, poll_ms=opts.poll_ms, retrain=self._retrain_loop())
            self.dashboard = _serve(app, opts.dashboard_host, opts.dashboard_port)
            self._stoppers.append(self.dashboard.stop)
        elif shadow_control is not None:
            self._stoppers.append(shadow_control.close)
        elif opts.dashboard:
            self.notes.append("no dashboard: IoT Core mode needs the deployed API's URL (api_url)")
        for m in self.members:
            t = threading.Thread(target=self._run_agent, args=(m,), name=f"agent-{m.name}", daemon=True)
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _retrain_loop(self) -> LocalRetrainLoop | None:
        """The fleet loop on this stack's lake, deploying into the artifact root the agents watch."""
        if self.aws is None or not self.options.retrain:
            return None
        python = self.options.train_python or os.environ.get("BATTWIN_TRAIN_PYTHON") or sys.executable
        cells = SHARED_DATA / "cells"
        if self.options.lake_history and (cells / "nasa").is_dir():
            n = seed_lake_with_cells(self.aws.client("s3"), self.aws.names.bucket, cells)
            self.notes.append(
                f"lake history: {len(NASA_HISTORY_CELLS)} NASA cells, {n} measured discharges (real data)"
            )
        elif self.options.lake_history:
            self.notes.append(f"no lake history: {cells / 'nasa'} not found; retraining sees only the demo's cycles")
        self.retrain = LocalRetrainLoop(
            s3=self.aws.client("s3"),
            dynamodb=self.aws.client("dynamodb"),
            bucket=self.aws.names.bucket,
            model_root=model_root(self.workdir),
            workdir=self.workdir / "training",
            python=python,
        )
        self._stoppers.append(self.retrain.close)
        return self.retrain

    def _rules_runner(self, aws: LocalAws) -> LocalRulesRunner:
        ingestor = aws.ingestor(max_clock_skew_s=DEMO_MAX_CLOCK_SKEW_S)
        s3 = aws.client("s3")
        sqs = aws.client("sqs")
        queue_url = aws.failure_queue_url  # Lambda's on-failure destination in the template

        def ingest(event: dict[str, Any]) -> dict[str, Any]:
            return ingestor.handle(event).as_dict()

        def error_sink(key: str, body: bytes) -> None:
            s3.put_object(Bucket=aws.names.bucket, Key=key, Body=body, ContentType="application/json")

        def failure_sink(record: dict[str, Any]) -> None:
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(record, default=str))

        return LocalRulesRunner(
            self.broker_url,
            {
                "IngestFunction": ingest,
                # telemetry's checks in the lake transform accept the demo's clocks too
                **aws.firehose_targets(aws.lake_transform(max_clock_skew_s=DEMO_MAX_CLOCK_SKEW_S)),
            },
            error_sink=error_sink,
            failure_sink=failure_sink,
            workers=self.options.rules_workers,
        ).start()

    def _build_fleet(self, conn: Connection) -> None:
        opts = self.options
        for k, m in enumerate(FLEET[: opts.batteries]):
            self.members.append(simulated_member(m, k + 1, conn, self.workdir, opts.acceleration, opts.ageing))
        if opts.emulator:
            member = emulated_bms_member(EMULATED_BMS, 101, conn, self.workdir, opts.acceleration, opts.ageing)
            self.members.append(member)
        if opts.replay_log is not None:
            if opts.replay_log.is_file():
                rm = replay_member(opts.replay_log, opts.replay_rate_hz)
                self.members.append(replay_agent_member(rm, conn, self.workdir, self.stop_event))
            else:
                self.notes.append(f"no replay: {opts.replay_log} not found (the NASA logs live in ../shared/data)")
                log.warning("replay log not found", extra={"path": str(opts.replay_log)})
        if opts.bank_packs:
            self.members.append(bank_member(opts.bank_packs, conn, self.workdir, opts.acceleration, opts.ageing))

    def _run_agent(self, m: Member) -> None:
        try:
            m.agent.run(self.stop_event)
        except Exception:
            log.exception("agent stopped with an error", extra={"thing": m.name})
        finally:
            m.close()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=20)
        for m in self.members:
            m.close()
        # the rules runner drains what the agents sent last before the tables go away
        for stopper in reversed(self._stoppers):
            try:
                stopper()
            except Exception:
                log.exception("stopping a component failed")
        self._stoppers.clear()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views ------------------------------------------------------------------------------------
    @property
    def dashboard_url(self) -> str | None:
        return self.dashboard.url if self.dashboard is not None else None

    def describe(self) -> str:
        lines = [f"broker        {self.broker_url}" + (" (embedded amqtt)" if self.broker is not None else "")]
        if self.aws is not None:
            lines.append(
                f"AWS (moto)    {self.aws.endpoint}  tables {self.aws.names.device_state_table}, "
                f"{self.aws.names.history_table}; bucket {self.aws.names.bucket}"
            )
        if self.rules is not None:
            lines.append(f"IoT rules     {len(self.rules.rules)} from cloud/template.yaml → ingest handler")
        if self.shadows is not None:
            lines.append(f"shadows       local shadow service ({self.shadow_root}/things/…)")
        for m in self.members:
            sim = "SIMULATED" if m.simulated else "real data"
            lines.append(f"battery       {m.name:<15} {m.kind:<26} {m.stress} [{sim}]")
            if len(m.things) > 1:
                lines.append(f"              {len(m.things)} packs: {m.things[0]} … {m.things[-1]}")
        lines.extend(f"note          {n}" for n in self.notes)
        if self.dashboard_url:
            lines.append(f"dashboard     {self.dashboard_url}")
        return "\n".join(lines)


def _serve(app: Dashboard, host: str, port: int) -> DashboardServer:
    try:
        return DashboardServer(app, host, port).start()
    except OSError as exc:
        if port == 0:
            raise
        log.warning("dashboard port busy; using a free one", extra={"port": port, "error": str(exc)})
        return DashboardServer(app, host, 0).start()


def run_full_demo(
    duration_s: float | None = None,
    batteries: int = 4,
    broker_url: str | None = None,
    workdir: Path | None = None,
    acceleration: float = 2000.0,
    ageing: float = 1.0,
    *,
    bank_packs: int = 16,
    table: bool | None = None,
    dashboard: bool = True,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    emulator: bool = True,
    replay_log: Path | None = DEFAULT_REPLAY_LOG,
    replay_rate_hz: float = 200.0,
    cert_dir: Path | None = None,
    ca_file: Path | None = None,
    api_url: str | None = None,
    install_signal_handlers: bool = True,
) -> int:
    """Run the full-stack demo until Ctrl-C / SIGTERM or ``duration_s``; 0 on a clean stop, 2 on bad input.

    ``bank_packs``: the packs of the demo's multi-pack core (0: none).
    ``table``: the terminal fleet table (as the broker sees it), redrawn every 2 s; None = when stdout is a
    terminal. Otherwise one status line is printed every 10 s.
    """
    if not 1 <= batteries <= len(FLEET):
        print(f"battwin demo: --batteries must be 1..{len(FLEET)}", file=sys.stderr)
        return 2
    options = StackOptions(
        batteries=batteries,
        bank_packs=bank_packs,
        acceleration=acceleration,
        ageing=ageing,
        broker_url=broker_url,
        workdir=workdir,
        emulator=emulator,
        replay_log=replay_log,
        replay_rate_hz=replay_rate_hz,
        dashboard=dashboard,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
        cert_dir=cert_dir,
        ca_file=ca_file,
        api_url=api_url,
    )
    if not 0 <= bank_packs <= 64:
        print("battwin demo: --bank-packs must be 0..64", file=sys.stderr)
        return 2
    if options.iot_core and cert_dir is None:
        print(
            "battwin demo: an mqtts:// broker (IoT Core) needs cert_dir with one certificate per thing", file=sys.stderr
        )
        return 2
    stack = LocalStack(options)
    stopping = threading.Event()
    if install_signal_handlers:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
    stack.start()
    show_table = sys.stdout.isatty() if table is None else table
    print(
        f"battwin demo (full stack): x{acceleration:g} time, x{ageing:g} ageing; simulated batteries are tagged "
        f"SIMULATED everywhere. Ctrl-C to stop.\n{stack.describe()}",
        flush=True,
    )
    if stack.dashboard_url:
        print(f"battwin demo: dashboard on {stack.dashboard_url}", flush=True)
    started = time.monotonic()
    last_line = 0.0
    tty = sys.stdout.isatty()
    try:
        while not stopping.is_set():
            stopping.wait(2.0)
            elapsed = time.monotonic() - started
            if show_table and stack.monitor is not None:
                header = (
                    f"-- fleet after {elapsed:5.0f} s (simulated {elapsed * acceleration / 86400:.1f} days)"
                    f" -- dashboard {stack.dashboard_url or '-'} --"
                )
                print(("\x1b[2J\x1b[H" if tty else "") + header + "\n" + stack.monitor.table(), flush=True)
            elif elapsed - last_line >= 10.0:
                last_line = elapsed
                stats = stack.rules.stats() if stack.rules is not None else {}
                alive = sum(t.is_alive() for t in stack.threads)
                print(
                    f"battwin demo: {elapsed:5.0f} s, {alive} agents running, "
                    f"{stats.get('outcome:stored', 0)} messages stored",
                    flush=True,
                )
            if duration_s is not None and elapsed >= duration_s:
                stopping.set()
    finally:
        stack.stop()
    print("battwin demo: stopped", flush=True)
    return 0
