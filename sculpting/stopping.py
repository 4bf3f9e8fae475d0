"""Stopping a training run cleanly: SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop at its next step
boundary, where it saves what it can and exits with one line saying what was kept and how to go on. A second
signal acts at once, as it would without this."""
import signal
import sys

from sculpting.errors import UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(UserError):
    """A run stopped on a signal: one line saying what was saved and how to continue."""


class StopRequests:
    """While entered, SIGINT and SIGTERM only set `requested` (the signal's name); the first one puts the previous
    handlers back, so that a second acts at once. Leaving restores the previous handlers."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def __enter__(self):
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._request)
        except ValueError:  # not the main thread, where signals cannot be caught: they act as before
            self._restore()
        return self

    def __exit__(self, *exc_info):
        self._restore()

    def _request(self, signum, frame):
        self.requested = signal.Signals(signum).name
        self._restore()
        print(f"\n{self.requested}: stopping at the end of this step (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}
