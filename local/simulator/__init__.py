"""A local fake of Meta's WhatsApp Cloud API (Graph API) for the dev host, e2e tests and
benchmarks: sends with Meta's limits and error bodies, signed status and inbound-message
webhooks to the app, fault injection, and control endpoints under ``/simulator/``.

Run it alone with ``python -m local.simulator --help``; embed it with :class:`CloudApiSimulator`.
"""

from local.simulator.app import CloudApiSimulator
from local.simulator.config import BusinessNumber, ConfigError, FaultConfig, SimulatorConfig
from local.simulator.limits import Clock, SystemClock
from local.simulator.records import InboundResult, ReadReceipt, SentMessage

__all__ = [
    "BusinessNumber",
    "Clock",
    "CloudApiSimulator",
    "ConfigError",
    "FaultConfig",
    "InboundResult",
    "ReadReceipt",
    "SentMessage",
    "SimulatorConfig",
    "SystemClock",
]
