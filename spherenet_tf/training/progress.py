"""A one-line progress bar on stderr (stdout keeps only the original's log lines)."""

import math
import sys
import time


class ProgressBar:
    """`[=====.....] 1200/64000  21.3 it/s ETA 00:49:10 lr=1e-03`, redrawn at most twice
    a second."""

    def __init__(self, total, first=0, stream=sys.stderr):
        self.total = total
        self.first = first
        self.stream = stream
        self.start = time.time()
        self.last = 0.0
        self.shown = False

    def restart(self, first):
        """Count the rate from iteration `first` on (a resumed run)."""
        self.first = first
        self.start = time.time()

    def update(self, iteration, text=""):
        now = time.time()
        if now - self.last < 0.5 and iteration < self.total - 1:
            return
        self.last = now
        done = iteration - self.first + 1
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - 1 - iteration) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * (iteration + 1) / self.total)
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if math.isfinite(left) else "--:--:--"
        msg = (f"\r[{'=' * filled}{'.' * (width - filled)}] {iteration}/{self.total - 1} "
               f"{rate:6.1f} it/s ETA {eta} {text}")
        self.stream.write(msg[:160])
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False
