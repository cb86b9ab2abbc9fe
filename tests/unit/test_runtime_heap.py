from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared_code import runtime
from shared_code.telemetry import TelemetrySettings


@pytest.fixture
def unfrozen_heap() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_a_worker_freezes_what_it_built_at_start_up(
    monkeypatch: pytest.MonkeyPatch, unfrozen_heap: None
) -> None:
    built = object()

    async def build_services(settings: object) -> object:
        return built

    monkeypatch.setattr(runtime, "build_services", build_services)

    class Settings:
        telemetry = TelemetrySettings()  # off: nothing to configure

    async def load_settings() -> Settings:
        return Settings()

    monkeypatch.setattr(runtime, "load_settings", load_settings)
    monkeypatch.setattr(runtime, "_services", None)
    assert gc.get_freeze_count() == 0

    services = await runtime.get_services()
    frozen_after_start = gc.get_freeze_count()
    assert services is built
    # Everything alive then (modules, settings, the services) is left out of later collections.
    assert frozen_after_start > 1_000

    assert await runtime.get_services() is built
    assert gc.get_freeze_count() == frozen_after_start  # a warm call does not collect again
