"""Move dead-lettered messages back to their queue, after the cause was fixed.

    python -m scripts.replay_dead_letters --queue inbound-events [--max 100] [--dry-run]

Azure Service Bus (the default, ``--backend azure``): the namespace from
``ServiceBusConnection__fullyQualifiedNamespace`` (or ``--namespace``), signed in as the user-assigned
identity ``--client-id`` / ``ServiceBusConnection__clientId`` when given, else through
``DefaultAzureCredential`` (``az login``: the signed-in account needs Azure Service Bus Data
Receiver and Data Sender on the namespace); ``ServiceBusConnection`` (a connection string) when
set instead. The dev host's queue (``--backend local``): ``DATABASE_URL`` or ``--database-url``.

Each message keeps its body, message id, session id and application properties; its dead-letter
copy is removed only after the queue accepted it. Messages first queued less than the duplicate
detection window ago (``--duplicate-window-minutes``, 10 as in infra/) are held back, since Service
Bus would drop their copy as a duplicate: run the command again after the time it prints. Exit
status: 0 when nothing was held back, 3 when some were, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from shared_code.bus.dead_letters import (
    DEFAULT_DUPLICATE_DETECTION_WINDOW,
    DeadLetterReplayer,
    ReplayReport,
)

EXIT_HELD_BACK = 3
# The app's own setting names (Functions' identity-based connection names are mixed case).
_ENVIRONMENT = dict(os.environ)


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.replay_dead_letters", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--queue", required=True, help="e.g. inbound-events, outbound-messages")
    parser.add_argument("--max", type=int, default=100, help="messages to replay at most")
    parser.add_argument("--dry-run", action="store_true", help="count, move nothing")
    parser.add_argument(
        "--backend",
        choices=("azure", "local"),
        default=_ENVIRONMENT.get("BUS_BACKEND", "azure"),
    )
    parser.add_argument(
        "--namespace",
        default=_ENVIRONMENT.get("ServiceBusConnection__fullyQualifiedNamespace"),
        help="<name>.servicebus.windows.net",
    )
    parser.add_argument(
        "--client-id",
        default=_ENVIRONMENT.get("ServiceBusConnection__clientId"),
        help="client id of a user-assigned managed identity",
    )
    parser.add_argument("--database-url", default=_ENVIRONMENT.get("DATABASE_URL"))
    parser.add_argument(
        "--duplicate-window-minutes",
        type=float,
        default=DEFAULT_DUPLICATE_DETECTION_WINDOW.total_seconds() / 60,
    )
    arguments = parser.parse_args(argv)
    if arguments.max < 1:
        parser.error("--max must be at least 1")
    if arguments.backend == "local" and not arguments.database_url:
        parser.error("--backend local needs --database-url or DATABASE_URL")
    if (
        arguments.backend == "azure"
        and not arguments.namespace
        and not _ENVIRONMENT.get("ServiceBusConnection")
    ):
        parser.error("--backend azure needs --namespace (or ServiceBusConnection)")
    return arguments


async def replay(arguments: argparse.Namespace) -> ReplayReport:
    window = timedelta(minutes=arguments.duplicate_window_minutes)
    if arguments.backend == "local":
        return await _replay_local(arguments, window)
    return await _replay_azure(arguments, window)


async def run_replay(replayer: DeadLetterReplayer, arguments: argparse.Namespace) -> ReplayReport:
    return await replayer.replay_dead_letters(
        arguments.queue, max_messages=arguments.max, dry_run=arguments.dry_run
    )


async def _replay_local(arguments: argparse.Namespace, window: timedelta) -> ReplayReport:
    from shared_code.bus.local_queue import LocalQueue, QueueOptions
    from shared_code.db.pool import open_pool

    pool = await open_pool(arguments.database_url, max_size=2, name="replay")
    queue = LocalQueue(pool, default_options=QueueOptions(duplicate_detection_window=window))
    try:
        return await run_replay(queue, arguments)
    finally:
        await queue.close()
        await pool.close()


async def _replay_azure(arguments: argparse.Namespace, window: timedelta) -> ReplayReport:
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
    from azure.servicebus.aio import ServiceBusClient

    from shared_code.bus.dead_letters import AzureDeadLetterReplayer

    connection_string = _ENVIRONMENT.get("ServiceBusConnection")
    if connection_string and not arguments.namespace:
        async with ServiceBusClient.from_connection_string(connection_string) as client:
            replayer = AzureDeadLetterReplayer(client, duplicate_detection_window=window)
            return await run_replay(replayer, arguments)
    credential = (
        ManagedIdentityCredential(client_id=arguments.client_id)
        if arguments.client_id
        else DefaultAzureCredential()
    )
    async with credential, ServiceBusClient(arguments.namespace, credential) as client:
        replayer = AzureDeadLetterReplayer(client, duplicate_detection_window=window)
        return await run_replay(replayer, arguments)


def describe(report: ReplayReport) -> str:
    verb = "would replay" if report.dry_run else "replayed"
    text = f"{report.queue}: {verb} {report.replayed} dead-lettered message(s)"
    if report.held_back:
        text += (
            f"; {report.held_back} held back (first queued within the duplicate detection "
            "window; Service Bus would drop their copy)"
        )
        if report.held_back_until is not None:
            text += f": run again after {report.held_back_until.isoformat(timespec='seconds')}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    report = asyncio.run(replay(arguments))
    print(describe(report))
    return EXIT_HELD_BACK if report.held_back else 0


if __name__ == "__main__":
    sys.exit(main())
