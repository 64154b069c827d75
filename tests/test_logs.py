"""What reaches the console: xattn/logs.py, without a subprocess."""

import logging
import os

import pytest

from xattn import logs


@pytest.fixture
def configured(monkeypatch):
    """The state `xattn` without -v leaves (not configure() itself: it replaces the root handlers)."""
    monkeypatch.setattr(logs, "_configured", True)
    monkeypatch.setattr(logs, "_verbose", False)


def test_native_stderr_goes_to_the_log_not_the_console(configured, capfd, caplog):
    with caplog.at_level(logging.INFO), logs.native_stderr_to_log("ray"):
        os.write(2, b"[W gcs_client.cc:210] Failed to get cluster ID\n\n")
    assert "Failed to get cluster ID" not in capfd.readouterr().err
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ray", "WARNING", "[W gcs_client.cc:210] Failed to get cluster ID")
    ]
    os.write(2, b"after\n")  # the console's stderr is back
    assert capfd.readouterr().err == "after\n"


def test_native_stderr_stays_on_the_console_with_verbose(configured, monkeypatch, capfd):
    monkeypatch.setattr(logs, "_verbose", True)
    with logs.native_stderr_to_log("ray"):
        os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"
