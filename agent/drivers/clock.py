"""Injected clocks: the emulators schedule every event through one of these, never through ``time``.

:class:`Clock` is the protocol: ``now()`` in seconds, ``call_at``/``call_later`` returning a
:class:`TimerHandle` that can be cancelled. Two implementations:

* :class:`VirtualClock`: a discrete-event scheduler. Events sit in a heap ordered by
  ``(time, sequence number)``; :meth:`VirtualClock.run_until` pops them in order and sets ``now`` to each
  event's time, as fast as the CPU allows. A handle is the heap entry itself (no object of its own), and
  :meth:`VirtualClock.schedule_later` (reached through :func:`later_scheduler` by code written against
  any :class:`Clock`) schedules without one. Events due at the same time run in the order they were
  scheduled (the sequence number), so a run is a deterministic function of its inputs.
* :class:`AsyncioClock`: real time on an asyncio event loop (``loop.time()``, ``loop.call_at``), for the
  agent driving emulated hardware live.

Callbacks take no arguments (bind them with :func:`functools.partial`) and must not raise: a raising
callback propagates out of :meth:`VirtualClock.run_until`, which is what tests want.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from qsdn.errors import ConfigError

__all__ = ["AsyncioClock", "Clock", "TimerHandle", "VirtualClock", "later_scheduler"]

_heappush = heapq.heappush


class TimerHandle(Protocol):
    """A scheduled callback."""

    def cancel(self) -> None:
        """Do not run the callback (no effect if it already ran)."""

    def cancelled(self) -> bool: ...


class Clock(Protocol):
    """Time and timers, injected into emulated hardware and protocol engines."""

    def now(self) -> float:
        """Current time in seconds."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` at time ``when`` (immediately after earlier events if ``when`` is past)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds."""
        ...


class _Event(list):  # type: ignore[type-arg]
    """A scheduled virtual event: the heap entry ``[time, sequence number, callback]`` itself.

    Lists compare element by element in C, and the sequence number is unique, so a comparison never
    reaches the callback. Cancelling clears the callback; a cleared entry is skipped when popped.
    """

    __slots__ = ()

    @property
    def when(self) -> float:
        return self[0]  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self[2] = None  # drop the reference early

    def cancelled(self) -> bool:
        return self[2] is None


class VirtualClock:
    """Discrete-event virtual time: deterministic, as fast as the CPU allows.

    The heap holds ``[time, sequence number, callback]`` lists; :meth:`call_at` and :meth:`call_later`
    return the entry itself as the handle (an :class:`_Event`, a list with ``cancel``), and
    :meth:`schedule_later` pushes a plain list and returns nothing, for callers that never cancel.
    A cancelled entry has its callback cleared and is skipped when popped.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = float(start_s)
        self._heap: list[list[object]] = []
        self._seq = itertools.count(1).__next__  # sequence numbers: unique, in scheduling order
        self._events_run = 0
        # A zero-delay event scheduled by the running callback (schedule_soon), held out of the heap.
        self._soon: list[object] | None = None
        self._running = False

    def now(self) -> float:
        return self._now

    @property
    def events_run(self) -> int:
        """How many callbacks have run (a measure of emulation work)."""
        return self._events_run

    def pending(self) -> int:
        """Scheduled callbacks not yet run or cancelled."""
        return sum(1 for entry in self._heap if entry[2] is not None)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        if when != when:
            raise ConfigError("cannot schedule an event at NaN")
        if when < self._now:
            when = self._now
        event = _Event((when, self._seq(), callback))
        _heappush(self._heap, event)
        return event

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        if not delay >= 0:  # negative or NaN
            raise ConfigError(f"delay must not be negative, got {delay}")
        event = _Event((self._now + delay, self._seq(), callback))
        _heappush(self._heap, event)
        return event

    def schedule_later(self, delay: float, callback: Callable[[], None]) -> None:
        """:meth:`call_later` without a handle (the event cannot be cancelled); ``delay`` >= 0."""
        _heappush(self._heap, [self._now + delay, self._seq(), callback])

    def schedule_soon(self, callback: Callable[[], None]) -> None:
        """``schedule_later(0.0, callback)``, run without a trip through the heap where that is the same.

        Inside :meth:`run_until`, the event is held aside; when the callback that scheduled it returns,
        it runs at once unless an older event is due at the same time (then it joins the heap, and the
        order is that of ``schedule_later``).
        """
        entry: list[object] = [self._now, self._seq(), callback]
        if not self._running:
            _heappush(self._heap, entry)
            return
        if self._soon is not None:
            _heappush(self._heap, self._soon)
        self._soon = entry

    def step(self) -> bool:
        """Run the next event; False if there is none."""
        heap = self._heap
        while heap:
            when, _, callback = heapq.heappop(heap)
            if callback is None:
                continue
            self._now = when  # type: ignore[assignment]
            self._events_run += 1
            callback()  # type: ignore[operator]
            return True
        return False

    def run_until(self, until_s: float) -> None:
        """Run every event due at or before ``until_s``, then set the time to ``until_s``."""
        if until_s < self._now:
            raise ConfigError(f"cannot run back in time to {until_s} (now {self._now})")
        heap = self._heap
        pop = heapq.heappop
        done = 0
        running, self._running = self._running, True
        try:
            while heap and heap[0][0] <= until_s:  # type: ignore[operator]
                when, _, callback = pop(heap)
                if callback is None:
                    continue
                self._now = when  # type: ignore[assignment]
                done += 1
                callback()  # type: ignore[operator]
                soon = self._soon
                while soon is not None:  # schedule_soon's event: next unless an older one is due now
                    self._soon = None
                    if heap and heap[0] < soon:
                        _heappush(heap, soon)
                        break
                    done += 1
                    soon[2]()  # type: ignore[operator]
                    soon = self._soon
        finally:
            self._running = running
            if self._soon is not None:
                _heappush(heap, self._soon)
                self._soon = None
            self._events_run += done
        self._now = until_s

    def run(self, max_events: int | None = None) -> None:
        """Run until no event is left (or ``max_events`` have run)."""
        done = 0
        while (max_events is None or done < max_events) and self.step():
            done += 1


def later_scheduler(clock: Clock) -> Callable[[float, Callable[[], None]], None]:
    """``clock.call_later`` without the handle: :meth:`VirtualClock.schedule_later` where there is one."""
    if isinstance(clock, VirtualClock):
        return clock.schedule_later
    call_later = clock.call_later

    def schedule_later(delay: float, callback: Callable[[], None]) -> None:
        call_later(delay, callback)

    return schedule_later


class AsyncioClock:
    """Real time on an asyncio loop: ``now`` is ``loop.time()``; timers are the loop's."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return self._loop.call_at(when, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        if delay < 0:
            raise ConfigError(f"delay must not be negative, got {delay}")
        return self._loop.call_later(delay, callback)
