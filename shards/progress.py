"""A small progress bar on stderr, shared by the long-running commands.

On a terminal it redraws one line (bar, count, rate, ETA); when stderr is not
a terminal (CI logs, pipes) it prints a plain line at most every `every`
seconds so logs stay readable.
"""
import sys
import time


def format_seconds(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total, label, unit="img", stream=None, enabled=True, every=10.0):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    @property
    def elapsed(self):
        return time.monotonic() - self.start

    @property
    def rate(self):
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def update(self, n=1):
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if not self.enabled:
            return
        if self.tty and (now - self._last >= 0.1 or finished):
            self._last = now
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()
        elif not self.tty and (now - self._last >= self.every or finished):
            self._last = now
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def _line(self):
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        eta = (self.total - self.done) / self.rate if self.rate > 0 else 0
        return (f"{self.label} [{bar:<24}] {self.done}/{self.total} {self.unit} "
                f"{self.rate:,.0f} {self.unit}/s  {format_seconds(self.elapsed)} elapsed, "
                f"ETA {format_seconds(eta)}")

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
