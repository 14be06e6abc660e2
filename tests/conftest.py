"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ilert_emulator.testing import EmulatorProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SEED = REPO_ROOT / "examples" / "demo-seed.json"
EVENTS_DIR = REPO_ROOT / "events"


@pytest.fixture
def emulator():
    """The ilert API emulator in its own process, seeded with the demo policies (api key `demo-key`)."""
    with EmulatorProcess(DEMO_SEED) as process:
        yield process
