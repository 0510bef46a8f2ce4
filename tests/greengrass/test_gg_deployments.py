"""Deployments on the nucleus emulator: lifecycles run as processes, restarted only when their text changes."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from devkit.nucleus import FLAVOURS, DeploymentError, NucleusEmulator
from tests.greengrass.gg_support import THING, probe_recipe, write_component

DATA = "com.test.Data"
READER = "com.test.Reader"
PY = sys.executable


def _data(build: Path, version: str) -> None:
    write_component(build, probe_recipe(DATA, version, lifecycle={"run": "true"}), {"data.txt": version})


def _reports(nucleus, component: str) -> list[dict]:
    return [json.loads(m.payload) for m in nucleus.published if m.component == component]


def _wait_reports(nucleus, component: str, count: int) -> list[dict]:
    assert nucleus.wait_for(lambda msgs: sum(m.component == component for m in msgs) >= count, 60), (
        f"{component} did not report {count} time(s)"
    )
    return _reports(nucleus, component)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_dependency_update_leaves_a_reader_running_its_own_lifecycle_change_restarts_it(nucleus, tmp_path, flavour):
    root = tmp_path / "greengrass"
    run = f"exec {PY} {{artifacts:path}}/app.py {{kernel:rootPath}}/packages/artifacts/{DATA}"
    reader = probe_recipe(READER, run=run, dependencies={DATA: {"DependencyType": "SOFT"}})
    _data(tmp_path / "b1", "1.0.0")
    write_component(tmp_path / "b1", reader)
    first = nucleus.deploy_build(tmp_path / "b1")
    assert first.installed == [DATA, READER]  # dependencies first
    assert _wait_reports(nucleus, READER, 1)[0]["argv"] == [f"{root}/packages/artifacts/{DATA}"]
    pid = nucleus.component_pid(READER)
    assert pid is not None and nucleus.component_state(READER) == "RUNNING"
    assert nucleus.wait_for_state(DATA, "FINISHED", 30)

    _data(tmp_path / "b2", "2.0.0")  # a new version of the component whose files the reader reads
    second = nucleus.deploy_build(tmp_path / "b2")
    assert second.installed == [DATA] and second.unchanged == [READER]
    assert nucleus.component_pid(READER) == pid, "the reader was restarted by another component's deployment"
    assert (root / "packages" / "artifacts" / DATA / "2.0.0" / "data.txt").read_text() == "2.0.0"
    old = root / "packages" / "artifacts" / DATA / "1.0.0"
    if flavour == "lite":  # lite deletes the previous version's artifacts
        assert not old.exists() and old in second.removed_artifacts
    else:
        assert (old / "data.txt").read_text() == "1.0.0" and second.removed_artifacts == []

    reader["Manifests"][0]["Lifecycle"]["run"] = run + " --changed"  # its own lifecycle text changes
    write_component(tmp_path / "b3", reader, None)
    third = nucleus.deploy_build(tmp_path / "b3", components=[READER])
    if flavour == "lite":  # same version, RUNNING: "already running. Will not redeploy."
        assert third.unchanged == [DATA, READER] and nucleus.component_pid(READER) == pid
        reader["ComponentVersion"] = "1.1.0"  # lite picks a new lifecycle up with a new version
        write_component(tmp_path / "b4", reader, None)
        assert nucleus.deploy_build(tmp_path / "b4").installed == [READER]
    else:
        assert third.restarted == [READER] and third.installed == []
    reports = _wait_reports(nucleus, READER, 2)
    assert reports[-1]["argv"][-1] == "--changed"
    assert nucleus.component_pid(READER) not in (None, pid)


@pytest.mark.parametrize("flavour", ["classic"])
def test_classic_restarts_a_component_whose_lifecycle_names_a_dependencys_path(nucleus, tmp_path):
    """{Dep:artifacts:path} is resolved at deployment: a new Dep version changes the text, so a restart."""
    run = f"exec {PY} {{artifacts:path}}/app.py {{{DATA}:artifacts:path}}"
    _data(tmp_path / "b1", "1.0.0")
    write_component(tmp_path / "b1", probe_recipe(READER, run=run, dependencies={DATA: {}}))
    nucleus.deploy_build(tmp_path / "b1")
    assert _wait_reports(nucleus, READER, 1)[0]["argv"][0].endswith(f"/{DATA}/1.0.0")
    pid = nucleus.component_pid(READER)
    _data(tmp_path / "b2", "2.0.0")
    result = nucleus.deploy_build(tmp_path / "b2")
    assert result.restarted == [READER]
    assert _wait_reports(nucleus, READER, 2)[-1]["argv"][0].endswith(f"/{DATA}/2.0.0")
    assert nucleus.component_pid(READER) not in (None, pid)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_install_runs_first_with_the_nucleus_environment(nucleus, tmp_path, flavour):
    app = "com.test.App"
    recipe = probe_recipe(app, install="echo installed > {work:path}/marker")
    write_component(tmp_path / "b", recipe)
    assert nucleus.deploy_build(tmp_path / "b").installed == [app]
    (report,) = _wait_reports(nucleus, app, 1)  # it connected with its own SVCUID and was authorized
    work = tmp_path / "greengrass" / "work" / app
    assert (work / "marker").read_text() == "installed\n"
    assert Path(report["cwd"]) == work
    env = report["env"]
    assert env["AWS_IOT_THING_NAME"] == THING and env["AWS_REGION"] == nucleus.region
    assert env["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] == nucleus.socket_path
    assert env["SVCUID"] not in (None, nucleus.svcuid) and env["BT_SETENV"] == "x"

    recipe["ComponentVersion"] = "1.1.0"  # a new version is reinstalled, with the test's install step
    write_component(tmp_path / "b2", recipe)
    pid = nucleus.component_pid(app)
    result = nucleus.deploy_build(tmp_path / "b2", install_overrides={app: "echo overridden > marker"})
    assert result.installed == [app] and nucleus.component_pid(app) not in (None, pid)
    assert (work / "marker").read_text() == "overridden\n"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_failing_install_fails_the_deployment_and_breaks_the_component(nucleus, tmp_path):
    write_component(tmp_path / "b", probe_recipe("com.test.Bad", install="exit 3"))
    with pytest.raises(DeploymentError, match="the install step exited with 3"):
        nucleus.deploy_build(tmp_path / "b")
    assert nucleus.component_state("com.test.Bad") == "BROKEN" and nucleus.component_pid("com.test.Bad") is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_run_steps_that_end_report_finished_or_errored(nucleus, tmp_path):
    write_component(tmp_path / "b", probe_recipe("com.test.Ok", run="exit 0"))
    write_component(tmp_path / "b", probe_recipe("com.test.Fails", run="exit 4"))
    nucleus.deploy_build(tmp_path / "b")
    assert nucleus.wait_for_state("com.test.Ok", "FINISHED", 30)
    assert nucleus.wait_for_state("com.test.Fails", "ERRORED", 30)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_zip_artifacts_are_unpacked_by_classic_and_left_packed_by_lite(nucleus, tmp_path, flavour):
    build = tmp_path / "b"
    name = "com.test.Zipped"
    art = build / "artifacts" / name / "1.0.0"
    art.mkdir(parents=True)
    with zipfile.ZipFile(art / "bundle.zip", "w") as zf:
        zf.writestr("pkg/hello.txt", "hi")
    recipe = probe_recipe(
        name, lifecycle={"run": "true"}, artifacts=[{"URI": "s3://bucket/bundle.zip", "Unarchive": "ZIP"}]
    )
    write_component(build, recipe, {})
    nucleus.deploy_build(build)
    unpacked = tmp_path / "greengrass" / "packages" / "artifacts-unarchived" / name / "1.0.0" / "bundle"
    assert (tmp_path / "greengrass" / "packages" / "artifacts" / name / "1.0.0" / "bundle.zip").is_file()
    if flavour == "classic":
        assert (unpacked / "pkg" / "hello.txt").read_text() == "hi"
    else:
        assert not unpacked.exists()


def test_deploying_needs_a_root_folder_and_a_build_folder(socket_path, tmp_path):
    with pytest.raises(ValueError, match="no root folder"):
        NucleusEmulator(socket_path, THING, component="com.test.Host").deploy_build(tmp_path)
    emu = NucleusEmulator(socket_path, THING, component="com.test.Host", root=tmp_path / "gg")
    with pytest.raises(DeploymentError, match="not a greengrass-build folder"):
        emu.deploy_build(tmp_path / "nothing")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_deployments_configuration_merges_onto_what_the_component_has(nucleus, tmp_path):
    """As both nuclei merge a configuration update: onto the component's existing configuration (the
    recipe's defaults only the first time, or for keys it does not have yet), not onto the defaults again."""
    app = "com.test.Conf"
    recipe = probe_recipe(app, run="exec sleep 600")
    recipe["ComponentConfiguration"]["DefaultConfiguration"].update({"a": 1, "b": 2})
    recipe["Manifests"][0]["Lifecycle"]["Setenv"] = {"BT_A": "{configuration:/a}", "BT_B": "{configuration:/b}"}
    write_component(tmp_path / "b1", recipe)
    nucleus.deploy_build(tmp_path / "b1", configuration={app: {"a": 10}})
    pid = nucleus.component_pid(app)
    recipe["ComponentVersion"] = "1.1.0"  # a new version with a new default key, and a second merge
    recipe["ComponentConfiguration"]["DefaultConfiguration"]["c"] = 3
    write_component(tmp_path / "b2", recipe)
    result = nucleus.deploy_build(tmp_path / "b2", configuration={app: {"b": 20}})
    assert result.installed == [app] and nucleus.component_pid(app) not in (None, pid)
    conf = nucleus.configuration(app)
    assert (conf["a"], conf["b"], conf["c"]) == (10, 20, 3)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_steps_own_setenv_reaches_that_step_only(nucleus, tmp_path):
    app = "com.test.Env"
    recipe = probe_recipe(app)
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    show = 'echo "$BT_INSTALL/$BT_RUN/$BT_SETENV" >'
    lifecycle["install"] = {"Script": f"{show} install.txt", "Setenv": {"BT_INSTALL": "i"}}
    lifecycle["run"] = {"Script": f"{show} run.txt; {lifecycle['run']}", "Setenv": {"BT_RUN": "r"}}
    write_component(tmp_path / "b", recipe)
    nucleus.deploy_build(tmp_path / "b")
    _wait_reports(nucleus, app, 1)
    work = tmp_path / "greengrass" / "work" / app
    # the lifecycle's Setenv (BT_SETENV) in both; each step's own only in that step
    assert (work / "install.txt").read_text() == "i//x\n" and (work / "run.txt").read_text() == "/r/x\n"
