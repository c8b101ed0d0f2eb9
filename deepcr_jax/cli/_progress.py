"""What ``deepcr-jax clean`` shows while it runs: a progress bar, per-file lines, a summary.

The bar is tqdm's (an optional dependency, in the ``train`` extra), drawn on
stderr when it is a terminal and there is more than one file; without tqdm,
or when not a terminal, only the plain per-file lines are printed. ``-q``
prints nothing but errors. With ``--workers``/``--scheduler`` the bar (and
each plain per-file line) also shows the throughput: files/min, Mpix/s of
science pixels, and the ETA.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

from deepcr_jax.cli._common import PROG

__all__ = ["Progress"]


@dataclasses.dataclass
class Progress:
    """Counts and output of one ``clean`` run over ``total`` files."""

    total: int
    quiet: bool = False
    cleaned: int = 0
    skipped: int = 0
    failed: int = 0
    n_cr: int = 0
    pixels: int = 0
    show_rate: bool = False

    def __post_init__(self) -> None:
        self.t0 = time.perf_counter()
        self._bar = None
        if not self.quiet and self.total > 1 and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=self.total, unit="file", file=sys.stderr, dynamic_ncols=True)
        self._log = logging.StreamHandler(sys.stderr)
        self._log.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        self._logger = logging.getLogger("deepcr_jax.native")
        self._level = self._logger.level
        if not self.quiet:  # e.g. "compiling the native convolution kernel into ..." on first use
            self._logger.addHandler(self._log)
            self._logger.setLevel(logging.INFO)

    def _print(self, text: str, stream) -> None:
        if self._bar is not None:
            self._bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def line(self, text: str) -> None:
        """A report line on stdout (not with ``-q``)."""
        if not self.quiet:
            self._print(text, sys.stdout)

    def warn(self, text: str) -> None:
        """``deepcr-jax: warning: TEXT`` on stderr (not with ``-q``)."""
        if not self.quiet:
            self._print(f"{PROG}: warning: {text}", sys.stderr)

    def note(self, text: str) -> None:
        """``deepcr-jax: TEXT`` on stderr (not with ``-q``)."""
        if not self.quiet:
            self._print(f"{PROG}: {text}", sys.stderr)

    def fail(self, text: str) -> None:
        """A failed file: ``deepcr-jax: error: TEXT`` on stderr, always."""
        self.failed += 1
        self._print(f"{PROG}: error: {text}", sys.stderr)
        self._step()

    def done(self, n_cr: int | None, pixels: int = 0) -> None:
        """A file cleaned with ``n_cr`` CR pixels (``pixels`` science pixels), or skipped (None)."""
        if n_cr is None:
            self.skipped += 1
        else:
            self.cleaned += 1
            self.n_cr += n_cr
            self.pixels += pixels
        self._step()

    def _step(self) -> None:
        if self._bar is not None:
            if self.show_rate:
                self._bar.set_postfix_str(self.rate(), refresh=False)
            self._bar.update(1)

    def rate(self) -> str:
        """``R files/min, P Mpix/s, ETA m:ss``: files cleaned so far over the time since the start."""
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        left = self.total - self.cleaned - self.skipped - self.failed
        per_s = self.cleaned / seconds
        eta = f"{int(left / per_s) // 60}:{int(left / per_s) % 60:02d}" if per_s > 0 else "?"
        return f"{60 * per_s:.1f} files/min, {self.pixels / seconds / 1e6:.2f} Mpix/s, ETA {eta}"

    @property
    def position(self) -> str:
        """``[k/N]``: files finished (any status) of the total."""
        k = self.cleaned + self.skipped + self.failed
        return f"[{k:>{len(str(self.total))}d}/{self.total}]"

    def summary(self) -> str:
        """``N of M files cleaned (s skipped, f failed), X CR pixels, in T s``."""
        seconds = time.perf_counter() - self.t0
        return (
            f"{self.cleaned} of {self.total} files cleaned ({self.skipped} skipped, {self.failed} failed), "
            f"{self.n_cr:,d} CR pixels, in {seconds:.1f} s"
        )

    def close(self) -> None:
        """Close the bar and detach the log handler."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._logger.removeHandler(self._log)
        self._logger.setLevel(self._level)
