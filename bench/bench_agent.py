"""Agent benchmarks (issue #2): replay throughput, spool+publish vs raw awscrt, RSS, time to first publish.

Every figure is printed with a baseline measured in the same run, and written to
bench/results/agent.json. Needs mosquitto on PATH (apt-get install mosquitto).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from awscrt import mqtt  # noqa: E402

from device_agent.agent import Agent  # noqa: E402
from device_agent.config import AgentConfig, MqttSettings  # noqa: E402
from device_agent.uplink.mqtt_transport import MqttTransport  # noqa: E402
from device_agent.uplink.publisher import Publisher  # noqa: E402
from device_agent.uplink.spool import Spool  # noqa: E402
from hardware.errors import SourceExhausted  # noqa: E402
from hardware.replay import ReplaySource  # noqa: E402

RESULTS = REPO / "bench" / "results"
NASA_LOG = REPO.parent / "shared" / "data" / "bms-logs" / "nasa_pcoe" / "B0033.csv.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bench_replay(broker: Broker, work: Path) -> dict[str, float]:
    # baseline: reading and validating the log alone
    src = ReplaySource(NASA_LOG)
    src.open()
    t0 = time.perf_counter()
    n = 0
    try:
        while True:
            src.poll()
            n += 1
    except SourceExhausted:
        pass
    parse_s = time.perf_counter() - t0
    # the whole pipeline: tracker + estimator + spool + publish to mosquitto, until the spool is empty
    config = AgentConfig(
        thing_name="bench-replay",
        mqtt={"url": broker.url, "inflight": 200},
        telemetry={"batch_max_samples": 100, "batch_max_age_s": 3600.0},
        spool={"path": work / "replay.db"},
    )
    agent = Agent(config, ReplaySource(NASA_LOG), MqttTransport(config.mqtt, "bench-replay"))
    agent.transport.start()
    agent.transport.wait_connected(10)
    t0 = time.perf_counter()
    agent.run(threading.Event())  # ends at the end of the log; shutdown drains the spool (bounded)
    agent.publisher.wait_empty(60)
    total_s = time.perf_counter() - t0
    sent = agent.publisher.acked
    return {
        "samples": n,
        "parse_only_samples_per_s": n / parse_s,
        "pipeline_samples_per_s": n / total_s,
        "ratio_pipeline_vs_parse": (n / total_s) / (n / parse_s),
        "messages_published": sent,
        "cycles": agent.stats.cycles,
        "health": agent.stats.health,
    }


def bench_publish(broker: Broker, work: Path, n: int = 20_000, size: int = 1024) -> dict[str, float]:
    payload = b"x" * size
    # baseline: raw awscrt QoS1 publishing with a bounded window, waiting for every PUBACK
    client = mqtt.Client(None, None)
    conn = mqtt.Connection(client=client, host_name="127.0.0.1", port=broker.port, client_id="bench-raw")
    conn.connect().result(10)
    window = threading.Semaphore(200)
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def on_ack(_f: object) -> None:
        window.release()
        with lock:
            count[0] += 1
            if count[0] == n:
                done.set()

    t0 = time.perf_counter()
    for _ in range(n):
        window.acquire()
        fut, _pid = conn.publish("bench/raw", payload, mqtt.QoS.AT_LEAST_ONCE)
        fut.add_done_callback(on_ack)
    done.wait(120)
    raw_s = time.perf_counter() - t0
    conn.disconnect().result(10)
    # battwin: every message written to the SQLite spool, sent by the publisher, deleted on PUBACK
    spool = Spool(work / "pub.db")
    transport = MqttTransport(MqttSettings(url=broker.url), "bench-spool")
    transport.start()
    transport.wait_connected(10)
    pub = Publisher(spool, transport, inflight=200)
    pub.start()
    t0 = time.perf_counter()
    for k in range(n):
        spool.put(f"m{k}", "bench/spool", payload, float(k))
        if k % 100 == 0:
            pub.notify()
    pub.wait_empty(120)
    spool_s = time.perf_counter() - t0
    pub.stop()
    transport.stop()
    return {
        "messages": n,
        "payload_bytes": size,
        "raw_awscrt_msgs_per_s": n / raw_s,
        "spool_publish_msgs_per_s": n / spool_s,
        "ratio_spool_vs_raw": (n / spool_s) / (n / raw_s),
    }


RSS_SCRIPT = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from device_agent.config import load_config
from device_agent.runtime import build_agent
cfg = load_config(None, {"thing_name": "bench-rss", "mqtt": {"url": sys.argv[2]},
                         "spool": {"path": sys.argv[3]}, "health": {"model_dir": sys.argv[4] or None},
                         "source": {"simulator": {"time_acceleration": 20000}, "sample_interval_s": 10}})
agent = build_agent(cfg)
stop = threading.Event()
threading.Timer(4.0, stop.set).start()
stats = agent.run(stop)
status = open("/proc/self/status").read()
hwm_kb = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
print(json.dumps({"max_rss_mb": hwm_kb / 1024, "samples": stats.samples, "health": stats.health,
                  "model": type(agent.estimator.model).__name__ if agent.estimator.model else None,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def bench_rss(broker: Broker, work: Path) -> dict[str, object]:
    model_dir = REPO / "device_agent" / "health" / "shipped_model"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RSS_SCRIPT,
            str(REPO),
            broker.url,
            str(work / "rss.db"),
            str(model_dir) if (model_dir / "model.json").exists() else "",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    # baseline: a bare interpreter
    bare = subprocess.run(
        [
            sys.executable,
            "-c",
            "import re;print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])/1024)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result["bare_python_rss_mb"] = float(bare.stdout.strip())
    return result


def bench_first_publish(broker: Broker, work: Path) -> dict[str, float]:
    import paho.mqtt.client as paho

    got = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-first-subscriber")
    sub.on_message = lambda *a: got.set()
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("battwin/bench-first/#", qos=1)
    sub.loop_start()
    subscribed.wait(10)
    env = dict(os.environ)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "battwin"),
            "run",
            "--thing",
            "bench-first",
            "--broker",
            broker.url,
            "--spool",
            str(work / "first.db"),
            "--set",
            "telemetry.batch_max_samples=1",
            "--log-level",
            "ERROR",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ok = got.wait(30)
    first_s = time.perf_counter() - t0
    proc.terminate()
    proc.wait(20)
    sub.loop_stop()
    # baseline: starting a bare interpreter
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare_s = time.perf_counter() - t0
    return {
        "first_publish_s": first_s if ok else float("nan"),
        "bare_python_start_s": bare_s,
        "ratio_vs_bare_start": first_s / bare_s,
    }


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="battwin-bench-"))
    broker = Broker(work)
    results: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    try:
        results["replay"] = r = bench_replay(broker, work)
        print(
            f"replay: {r['pipeline_samples_per_s']:,.0f} samples/s through the whole pipeline "
            f"({r['ratio_pipeline_vs_parse']:.2f}x of parse-only {r['parse_only_samples_per_s']:,.0f}/s; "
            "target ≥ 100,000)"
        )
        results["publish"] = p = bench_publish(broker, work)
        print(
            f"spool+publish: {p['spool_publish_msgs_per_s']:,.0f} msg/s vs raw awscrt "
            f"{p['raw_awscrt_msgs_per_s']:,.0f} msg/s = {p['ratio_spool_vs_raw']:.2f}x (target ≥ 0.5x)"
        )
        results["rss"] = m = bench_rss(broker, work)
        print(
            f"agent RSS: {m['max_rss_mb']:.1f} MB (bare python {m['bare_python_rss_mb']:.1f} MB; target ≤ 80 MB); "
            f"model={m['model']}; tensorflow imported: {m['tensorflow_imported']}"
        )
        results["first_publish"] = f = bench_first_publish(broker, work)
        print(
            f"first acknowledged publish: {f['first_publish_s']:.2f} s after start "
            f"(bare interpreter start {f['bare_python_start_s']:.2f} s; target ≤ 2 s)"
        )
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    (RESULTS / "agent.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
