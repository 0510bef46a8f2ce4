"""README: without mosquitto or chromium (or a locked package) the tests skip and say why; under CI=true a missing
one is a failure. The guards themselves, with what is missing simulated, and a positive control each."""

from __future__ import annotations

import pytest

import tests.conftest as root_conftest
import tests.dashboard.conftest as dashboard_conftest
import tests.support as support


@pytest.mark.parametrize("in_ci", [True, False])
def test_a_missing_module_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, in_ci: bool) -> None:
    monkeypatch.setattr(support, "IN_CI", in_ci)
    outcome = pytest.fail.Exception if in_ci else pytest.skip.Exception
    with pytest.raises(outcome, match="no_such_module_battwin"):
        support.require_module("no_such_module_battwin")
    assert support.require_module("json").__name__ == "json"  # positive control: a present module is returned


@pytest.mark.parametrize("in_ci", [True, False])
def test_a_missing_mosquitto_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, in_ci: bool) -> None:
    monkeypatch.setattr(root_conftest, "IN_CI", in_ci)
    monkeypatch.setattr(root_conftest, "mosquitto_binary", lambda: None)
    outcome = pytest.fail.Exception if in_ci else pytest.skip.Exception
    with pytest.raises(outcome, match="mosquitto is not installed"):
        root_conftest.require_mosquitto()
    monkeypatch.setattr(root_conftest, "mosquitto_binary", lambda: "/usr/sbin/mosquitto")
    root_conftest.require_mosquitto()  # positive control: present, nothing raised


@pytest.mark.parametrize("in_ci", [True, False])
def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, in_ci: bool) -> None:
    monkeypatch.setattr(dashboard_conftest, "IN_CI", in_ci)
    monkeypatch.setattr(dashboard_conftest, "_browser_missing", lambda: "Debian's chromium is not installed")
    fixture = dashboard_conftest.browser.__wrapped__  # type: ignore[attr-defined]
    outcome = pytest.fail.Exception if in_ci else pytest.skip.Exception
    with pytest.raises(outcome, match="chromium is not installed"):
        next(fixture())
