"""``python -m local.simulator``: run the Cloud API simulator on its own until Ctrl-C.

Secrets default to ``WHATSAPP_APP_SECRET`` / ``WHATSAPP_ACCESS_TOKEN`` from the environment, then
to the dev host's defaults, so they need not appear on a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from local.settings import DEV_DEFAULTS
from local.simulator.app import CloudApiSimulator
from local.simulator.config import (
    DEFAULT_DISPLAY_PHONE_NUMBER,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_WABA_ID,
    BusinessNumber,
    ConfigError,
    FaultConfig,
    SimulatorConfig,
)
from shared_code.heap import freeze_startup_heap

logger = logging.getLogger("local.simulator")

DEFAULT_PORT = 7072


def _business_number(value: str) -> BusinessNumber:
    """``PHONE_NUMBER_ID`` or ``PHONE_NUMBER_ID:DISPLAY_NUMBER``."""
    phone_number_id, _, display = value.partition(":")
    if not phone_number_id.isdigit() or (display and not display.isdigit()):
        raise argparse.ArgumentTypeError("expected digits, as PHONE_NUMBER_ID[:DISPLAY_NUMBER]")
    return BusinessNumber(
        phone_number_id=phone_number_id,
        display_phone_number=display or DEFAULT_DISPLAY_PHONE_NUMBER,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local.simulator", description="A local WhatsApp Cloud API (Graph API)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--webhook-url", help="the app's webhook; without it nothing is posted")
    parser.add_argument(
        "--app-secret",
        default=os.environ.get("WHATSAPP_APP_SECRET") or DEV_DEFAULTS["WHATSAPP_APP_SECRET"],
        help="signs webhooks (default: $WHATSAPP_APP_SECRET, else the dev default)",
    )
    parser.add_argument(
        "--access-token",
        default=os.environ.get("WHATSAPP_ACCESS_TOKEN") or DEV_DEFAULTS["WHATSAPP_ACCESS_TOKEN"],
        help="the bearer token to accept (default: $WHATSAPP_ACCESS_TOKEN, else the dev default)",
    )
    parser.add_argument(
        "--phone-number-id",
        dest="business_numbers",
        action="append",
        type=_business_number,
        metavar="ID[:DISPLAY]",
        help=f"a business number to serve; repeatable (default {DEFAULT_PHONE_NUMBER_ID})",
    )
    parser.add_argument("--waba-id", default=os.environ.get("WHATSAPP_BUSINESS_ACCOUNT_ID"))
    parser.add_argument("--throughput", type=float, default=80.0, help="sends/s per number")
    parser.add_argument("--pair-burst", type=int, default=45)
    parser.add_argument("--pair-interval", type=float, default=6.0, help="seconds per token")
    parser.add_argument(
        "--no-window", action="store_true", help="do not enforce the 24-hour window"
    )
    parser.add_argument(
        "--no-status-webhooks", action="store_true", help="post no sent/delivered/read"
    )
    parser.add_argument("--no-read", action="store_true", help="post sent and delivered only")
    parser.add_argument("--sent-delay", type=float, default=0.05)
    parser.add_argument("--delivered-delay", type=float, default=0.2)
    parser.add_argument("--read-delay", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    faults = parser.add_argument_group(
        "fault injection",
        "Probabilities between 0 and 1, per send request (mark-as-read is never faulted) or, for "
        "the status faults, per accepted message. PUT /simulator/config also takes *_next "
        'counts, e.g. {"faults": {"drop_before_next": 1}}. See FaultConfig.',
    )
    faults.add_argument(
        "--drop-before-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="fail before Meta's logic: close the connection with no answer, send nothing",
    )
    faults.add_argument(
        "--server-error-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="answer HTTP 500 with --server-error-code; send nothing",
    )
    faults.add_argument("--server-error-code", type=int, default=131000, choices=[131000, 1, 2])
    faults.add_argument(
        "--rate-limit-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="answer 130429 (throughput) on top of the real cap; send nothing",
    )
    faults.add_argument(
        "--pair-limit-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="answer 131056 (pair rate limit) without charging the pair bucket; send nothing",
    )
    faults.add_argument(
        "--timeout-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="accept and record the message, then hold the answer back (--hold-seconds)",
    )
    faults.add_argument(
        "--hold-seconds",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest an answer is held; released as soon as the client gives up",
    )
    faults.add_argument(
        "--failed-status-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="post a failed status (131026) instead of sent/delivered/read",
    )
    faults.add_argument(
        "--duplicate-status-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="post each status webhook twice",
    )
    faults.add_argument(
        "--out-of-order-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="post read before delivered",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        app_secret=args.app_secret,
        access_token=args.access_token,
        webhook_url=args.webhook_url,
        business_numbers=tuple(args.business_numbers or (BusinessNumber(),)),
        waba_id=args.waba_id or DEFAULT_WABA_ID,
        throughput_per_second=args.throughput,
        pair_burst=args.pair_burst,
        pair_interval_seconds=args.pair_interval,
        enforce_window=not args.no_window,
        status_webhooks=not args.no_status_webhooks,
        read_enabled=not args.no_read,
        sent_delay_seconds=args.sent_delay,
        delivered_delay_seconds=args.delivered_delay,
        read_delay_seconds=args.read_delay,
        seed=args.seed,
        faults=FaultConfig(
            drop_before_probability=args.drop_before_probability,
            server_error_probability=args.server_error_probability,
            server_error_code=args.server_error_code,
            rate_limit_probability=args.rate_limit_probability,
            pair_limit_probability=args.pair_limit_probability,
            timeout_probability=args.timeout_probability,
            hold_seconds=args.hold_seconds,
            failed_status_probability=args.failed_status_probability,
            duplicate_status_probability=args.duplicate_status_probability,
            out_of_order_probability=args.out_of_order_probability,
        ),
    )


async def _serve(config: SimulatorConfig, host: str, port: int) -> int:
    simulator = CloudApiSimulator(config)
    try:
        base_url = await simulator.start(host, port)
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", host, port, error)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    freeze_startup_heap()
    numbers = ", ".join(config.phone_number_ids)
    sys.stdout.write(
        f"WhatsApp Cloud API simulator on {base_url} (phone number ids: {numbers}; "
        f"webhooks: {config.webhook_url or 'off'}; control: {base_url}/simulator/stats)\n"
    )
    sys.stdout.flush()
    await stop.wait()
    logger.info("stopping")
    await simulator.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = _config(args)
    except ConfigError as error:
        sys.stderr.write(f"invalid setting: {error}\n")
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, args.host, args.port))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    raise SystemExit(main())
