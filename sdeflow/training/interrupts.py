r"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill, ``torchrun``).

While :meth:`~sdeflow.training.Trainer.fit` runs in the main thread, :class:`StopRequests`
replaces the handlers of both signals by one that only records the request; the loop finishes
the current step, writes the rolling checkpoint (when the run has an ``out_dir``) and raises
:class:`TrainingInterrupted`. A second SIGINT while the step finishes raises
:exc:`KeyboardInterrupt` at once. The previous handlers are restored when ``fit`` returns. In a
multi-process run the decision is collective, so every rank stops after the same step.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["TrainingInterrupted", "StopRequests"]


class TrainingInterrupted(Exception):
    """Training stopped on a signal after a whole step; the run resumes from ``checkpoint``.

    Attributes:
        step: The last step trained.
        checkpoint: The checkpoint written at ``step`` (``None``: the run has no ``out_dir``).
        signal_name: ``"SIGINT"`` or ``"SIGTERM"`` (``None`` on a rank of a multi-process run
            that stopped because another rank received the signal).

    Example:
        >>> err = TrainingInterrupted(7, None, "SIGINT")
        >>> err.step, str(err)
        (7, 'SIGINT: training stopped after step 7; no checkpoint (out_dir is None)')
    """

    def __init__(self, step: int, checkpoint: Path | None, signal_name: str | None) -> None:
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name
        where = ("no checkpoint (out_dir is None)" if checkpoint is None else
                 f"checkpoint {checkpoint} written; continue with fit(resume=True)")
        super().__init__(f"{signal_name or 'a signal on another rank'}: training stopped after "
                         f"step {step}; {where}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.step, self.checkpoint, self.signal_name)


class StopRequests:
    """A context that turns SIGINT and SIGTERM into a request to stop (main thread only;
    elsewhere, where Python cannot install handlers, it does nothing).

    Example:
        >>> import os, signal
        >>> with StopRequests() as stop:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     stop.signal_name
        'SIGTERM'
    """

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked to stop."""
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, not after the step
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        self.signal_name = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # None: a handler not installed from Python, which cannot be put back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
