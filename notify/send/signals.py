"""The signals that stop a run: Ctrl-C (SIGINT), SIGTERM, and a hangup (SIGHUP: the terminal it runs in closed,
an SSH session that dropped at 3 a.m.). Each stops the run the same way: nothing more is claimed, every message in
flight is settled, and the run ends (exit 130); killed instead, it would leave everything it had claimed in doubt.
Under nohup, which ignores SIGHUP, a hangup is left alone and the send goes on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable

from ..terminal import quiet_dead_terminal


class StopSignals:
    """Catches the signals while a run sends (`catch(True)`), and gives them back (`catch(False)`)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.by: str | None = None  # the first signal that stopped the run: SIGINT, SIGTERM or SIGHUP
        self.hangup = False  # SIGHUP caught (not where nohup ignores it)

    @property
    def interrupted(self) -> bool:
        return self.by is not None

    def on_signal(self, name: str) -> None:
        self.by = self.by or name
        self.stop.set()

    def on_hangup(self) -> None:
        quiet_dead_terminal()
        self.on_signal("SIGHUP")

    def catch(self, on: bool) -> None:
        loop = asyncio.get_running_loop()
        caught: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGINT: functools.partial(self.on_signal, "SIGINT"),
            signal.SIGTERM: functools.partial(self.on_signal, "SIGTERM")}
        if on:
            self.hangup = signal.getsignal(signal.SIGHUP) != signal.SIG_IGN
        if self.hangup:
            caught[signal.SIGHUP] = self.on_hangup
        for sig, handler in caught.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals here (not the main thread)
                if on:
                    loop.add_signal_handler(sig, handler)
                else:
                    loop.remove_signal_handler(sig)
