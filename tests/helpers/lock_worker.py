"""A separate process that contends for a project Lease (used by test_lock.py).

    python lock_worker.py KUBECONFIG NAMESPACE IDENTITY ROUNDS JOURNAL [hold]

Each round: acquire, append "enter" and "exit" lines with monotonic-free wall
stamps around a short critical section, release. With `hold`, it acquires once,
prints "held" and keeps renewing until killed.
"""

from __future__ import annotations

import asyncio
import sys
import time

import kubernetes

from workspace_operator.lock import LeaseLocks


async def main() -> None:
    kubeconfig, namespace, identity, rounds, journal = sys.argv[1:6]
    hold = len(sys.argv) > 6
    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    locks = LeaseLocks(kubernetes.client.CoordinationV1Api(client), namespace, identity, duration_seconds=3)
    if hold:
        async with locks.hold(namespace, "contended", wait_seconds=30):
            print("held", flush=True)
            await asyncio.Event().wait()
    with open(journal, "a", buffering=1) as out:  # noqa: ASYNC230 - one local file, opened once
        for _ in range(int(rounds)):
            async with locks.hold(namespace, "contended", wait_seconds=60):
                out.write(f"enter {identity} {time.time():.6f}\n")
                await asyncio.sleep(0.02)  # the critical section's work
                out.write(f"exit {identity} {time.time():.6f}\n")


asyncio.run(main())
