"""A long-running task of the server (restore checks, the scrub, health monitoring): started once after
recovery, stopped by cancelling it."""

from __future__ import annotations

import asyncio


class Background:
    """Runs :meth:`run` as one named task between :meth:`start` and :meth:`stop`."""

    task_name = "background"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the task."""
        self._task = asyncio.create_task(self.run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        """The work, until cancelled."""
        raise NotImplementedError
