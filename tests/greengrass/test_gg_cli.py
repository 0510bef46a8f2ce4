"""``battwin gg emulate``: the command a developer runs, and the plugin hook the battwin CLI loads."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from awsiot.greengrasscoreipc import connect
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import QOS

from devkit.nucleus.cli import register
from tests.greengrass.gg_support import AGENT_RECIPE, THING
from tests.support import REPO


def test_register_adds_gg_emulate():
    parser = argparse.ArgumentParser(prog="battwin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["gg", "emulate", "--socket", "/tmp/x.sock", "--thing", "t1", "--forward-mqtt", "mqtt://h:1"]
    )
    assert args.gg_command == "emulate" and args.thing == "t1" and args.forward_mqtt == "mqtt://h:1"
    assert str(args.recipe) == "recipes/com.battwin.Agent.yaml" and callable(args.func)
    assert args.flavour == "classic"
    lite = parser.parse_args(["gg", "emulate", "--socket", "/tmp/x.sock", "--thing", "t1", "--flavour", "lite"])
    assert lite.flavour == "lite"


def test_emulate_prints_the_environment_and_serves_the_real_client(socket_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.nucleus.cli",
            "emulate",
            "--socket",
            socket_path,
            "--thing",
            THING,
            "--recipe",
            str(AGENT_RECIPE),
            "--duration",
            "60",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        exports: dict[str, str] = {}
        assert proc.stdout is not None
        while len(exports) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "no output"
            if line.startswith("export "):
                key, value = line.removeprefix("export ").strip().split("=", 1)
                exports[key] = value
        assert exports["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] == socket_path
        client = GreengrassCoreIPCClientV2(
            client=connect(ipc_socket=socket_path, authtoken=exports["SVCUID"], timeout=10.0)
        )
        try:
            client.publish_to_iot_core(topic_name=f"battwin/{THING}/telemetry", qos=QOS.AT_LEAST_ONCE, payload=b"{}")
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "1 message(s) published to IoT Core, 0 request(s) denied" in out
    assert f"battwin/{THING}/telemetry" in out
    assert exports["SVCUID"] not in err  # the token is printed for export, never logged
