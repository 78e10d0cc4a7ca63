"""Stopping a run cleanly on SIGTERM / SIGINT: `hasten train` and `hasten compare`'s runs alike."""

from __future__ import annotations

import signal
import sys

from hasten.trainer.method import AgreeOnStop


class StopOnSignal:
    """SIGTERM / SIGINT (preemption, Ctrl-C) end the run at the next step boundary with the usual final evaluation
    and checkpoint; a second Ctrl-C stops at once. With several ranks the stop is agreed at each step (one tiny
    all-reduce on the CPU), so every rank stops after the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, trainer):
        self.trainer, self.signal, self.previous = trainer, None, {}
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        if trainer.world_size > 1:
            trainer.methods.append(AgreeOnStop(lambda: self.signal is not None))

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (e.g. one per thread from PR_SET_PDEATHSIG): already stopping
        self.signal = signum
        if self.trainer.world_size == 1:
            self.trainer.stop_requested = True
        if self.trainer.is_main:
            try:
                again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
                print(
                    f"\nhasten: {signal.Signals(signum).name} received; "
                    f"stopping after this step with a checkpoint{again}",
                    file=sys.stderr,
                    flush=True,
                )
            except RuntimeError:  # a print interrupted by this handler
                pass

    def request(self, signum: int) -> None:
        """Stop as if `signum` arrived now (it arrived before this handler was installed)."""
        self._handle(signum, None)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
