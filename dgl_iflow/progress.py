"""Progress reports that suit where they go: a tqdm bar on a terminal, a few plain lines elsewhere.

A tqdm bar redraws itself with carriage returns many times a second; on a terminal that is one
line that moves, but in a file, a pipe or a CI log every redraw stays, and a short training run
leaves hundreds of them. :func:`progress_bar` therefore returns a tqdm bar only when its stream
is interactive (a TTY, or a Jupyter kernel's stderr), and otherwise a :class:`LineProgress`,
which has the small part of tqdm's interface the library uses and writes at most one plain
line every ``interval`` seconds, plus one when it closes.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["LINE_INTERVAL_S", "LineProgress", "Progress", "is_interactive", "progress_bar"]

T = TypeVar("T")

#: Least seconds between two lines of a :class:`LineProgress` (its final line excepted): a
#: training run of an hour leaves about a hundred lines in a log, a run of seconds one.
LINE_INTERVAL_S = 30.0


class Progress(Protocol):
    """What the library's code may use of a bar from :func:`progress_bar`, tqdm's or not."""

    total: float | None
    n: float

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> Any: ...

    def close(self) -> Any: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


def _in_jupyter_kernel() -> bool:
    # A notebook's stderr is no TTY, yet tqdm.auto draws a widget there that does not pile up.
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


def is_interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) shows a redrawn bar as one line.

    True for a TTY, and for ``sys.stderr`` inside a Jupyter kernel; false for files, pipes,
    captured output, closed streams and ``None`` (``sys.stderr`` of a ``pythonw`` process).
    """
    stream = sys.stderr if stream is None else stream
    if stream is None:
        return False
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return stream is sys.stderr and _in_jupyter_kernel()


def _duration(seconds: float) -> str:
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    from tqdm.std import tqdm as std_tqdm

    return std_tqdm.format_interval(seconds)  # 12:03 or 1:02:03


class LineProgress(Generic[T]):
    """The part of tqdm's interface the library uses, writing rate-limited plain lines.

    A line reads ``train: 12/30 epoch (40%), 4.1 s, eta 6.2 s, loss=1.23, nll=0.98``; it is
    written when an update comes at least ``interval`` seconds after the previous line (or
    the start), and once more when the bar closes (unless the last line showed the final count
    already), so a run shorter than ``interval`` writes one line. No carriage returns, no ANSI
    codes.

    Parameters
    ----------
    iterable : iterable, optional
        Iterating the bar yields its items and counts one step each; the bar closes when the
        loop ends, also by ``break`` or an exception.
    total : int or float, optional
        Steps expected; default ``len(iterable)`` when it has one.
    desc : str
        Text before the count.
    unit : str
        Name of a step.
    initial : int or float
        Steps already done (a resumed run).
    disable : bool
        Write nothing.
    file : text stream, optional
        Where lines go; default the current ``sys.stderr``.
    interval : float
        Least seconds between two lines, the final one excepted.
    unit_scale : bool
        Show counts with SI prefixes (``3.41M``), as tqdm's option of that name.
    unit_divisor : int
        1000, or 1024 for bytes.
    leave : bool
        Accepted for tqdm compatibility: the final line is always written, since a log keeps
        what it was given anyway.
    """

    def __init__(self, iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, disable: bool = False, file: IO[str] | None = None,
                 interval: float = LINE_INTERVAL_S, unit_scale: bool = False, unit_divisor: int = 1000,
                 leave: bool = True) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.disable = disable
        self.file = file
        self.interval = interval
        self.unit_scale = unit_scale
        self.unit_divisor = unit_divisor
        self.leave = leave
        self.postfix: dict[str, str] = {}
        self.closed = False
        self._started = time.monotonic()
        self._last_line = self._started
        self._lines_written = 0
        self._written_n = initial

    # -- tqdm's interface -------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            # Also after break: the generator is closed once the loop lets go of it.
            self.close()

    def __enter__(self) -> LineProgress[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more steps; write a line if ``interval`` seconds passed since the last."""
        self.n += n
        if self.disable or self.closed:
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._write(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        """Values shown after the count, as ``key=value``; strings as given, others by ``str``."""
        del refresh  # the next line shows them
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = {str(key): value if isinstance(value, str) else str(value) for key, value in values.items()}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Replace the text before the count."""
        del refresh
        self.desc = desc or ""

    def refresh(self) -> None:
        """No-op: lines are written by :meth:`update` and :meth:`close` only."""

    def close(self) -> None:
        """Write the final line, unless disabled or the last line already showed this count; idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.disable and (self._lines_written == 0 or self.n != self._written_n):
            self._write(time.monotonic())

    # -- the line ---------------------------------------------------------

    def _count(self, value: float) -> str:
        if self.unit_scale:
            from tqdm.std import tqdm as std_tqdm

            return std_tqdm.format_sizeof(value, suffix=self.unit, divisor=self.unit_divisor)
        return f"{value:g}" if isinstance(value, float) else str(value)

    def format_line(self, now: float | None = None) -> str:
        """The line :meth:`update` or :meth:`close` would write now."""
        elapsed = (time.monotonic() if now is None else now) - self._started
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total:
            unit = "" if self.unit_scale else f" {self.unit}"  # 3.00MB/9.54MB as tqdm, or 12/30 epoch
            parts.append(f"{self._count(self.n)}/{self._count(self.total)}{unit} "
                         f"({100.0 * self.n / self.total:.0f}%), {_duration(elapsed)}")
            done = self.n - self.initial
            if 0 < done and self.n < self.total:
                parts.append(f", eta {_duration(elapsed / done * (self.total - self.n))}")
        else:
            parts.append(f"{self._count(self.n)}{'' if self.unit_scale else ' ' + self.unit}, {_duration(elapsed)}")
        if self.postfix:
            parts.append(", " + ", ".join(f"{key}={value}" for key, value in self.postfix.items()))
        return "".join(parts)

    def _write(self, now: float) -> None:
        stream = sys.stderr if self.file is None else self.file
        if stream is None:
            return
        print(self.format_line(now), file=stream, flush=True)
        self._last_line = now
        self._written_n = self.n
        self._lines_written += 1


def progress_bar(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, disable: bool = False, file: IO[str] | None = None,
                 leave: bool = True, unit_scale: bool = False, unit_divisor: int = 1000,
                 interval: float = LINE_INTERVAL_S) -> tqdm[T] | LineProgress[T]:
    """A tqdm bar on an interactive stream, otherwise a :class:`LineProgress`; same use for both.

    Use it as tqdm: iterate it, or call ``update``/``set_postfix`` in a ``with`` block; its
    ``total`` may be lowered while it runs.

    Parameters
    ----------
    iterable : iterable, optional
        Items to iterate, counting one step each.
    total : int or float, optional
        Steps expected; default ``len(iterable)`` when it has one.
    desc, unit : str
        Text before the count; name of a step.
    initial : int or float
        Steps already done (a resumed run).
    disable : bool
        Show nothing (a :class:`LineProgress` that writes nothing).
    file : text stream, optional
        Where to report; default the ``sys.stderr`` of the moment of the call, so redirected or
        captured stderr is honoured.
    leave : bool
        Keep the tqdm bar on screen once closed (a :class:`LineProgress` always writes its last line).
    unit_scale, unit_divisor : bool, int
        Counts with SI prefixes, by 1000 or 1024 (bytes).
    interval : float
        For a non-interactive stream: least seconds between two lines, the final one excepted.

    Returns
    -------
    tqdm.tqdm or LineProgress
        A tqdm bar (tqdm.auto's: a widget in Jupyter) if the stream is interactive.
    """
    options = dict(total=total, desc=desc, unit=unit, initial=initial, leave=leave, unit_scale=unit_scale,
                   unit_divisor=unit_divisor)
    if not disable and is_interactive(file):
        from tqdm.auto import tqdm as auto_tqdm

        return auto_tqdm(iterable, file=file, **options)
    return LineProgress(iterable, disable=disable, file=file, interval=interval, **options)
