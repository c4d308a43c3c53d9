r"""Training scalars and sample grids in TensorBoard's format, beside ``metrics.jsonl``.

:class:`TensorBoardLog` writes the numbers of each metrics record as scalars
(``train/loss`` at the record's step, ...) and pictures as images, through
:class:`torch.utils.tensorboard.SummaryWriter`; watch a run with
``tensorboard --logdir RUN_DIR/tensorboard``. It needs the ``tensorboard`` package
(``pip install "sdeflow[eval]"``); :func:`tensorboard_available` says whether it is there.

Resuming: a run continued from its checkpoint at step :math:`S` opens the log with
``purge_step=S + 1``, so TensorBoard hides what the interrupted run wrote after the checkpoint
and each step appears once. TensorBoard reads a run's event files in name order, and names
start with the creation second; a new log therefore waits, when needed, for a second later
than the newest existing file, so that its purge marker is read after the events it hides.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TensorBoardLog", "tensorboard_available"]

_EVENT_SECOND = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by :class:`TensorBoardLog`) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    r"""An event log in ``log_dir`` for scalars and images.

    Arguments:
        log_dir: Folder of the event files (created if missing).
        purge_step: Hide every event of this folder's earlier files at this step or later
            (a resumed run passes its first new step).
        prefix: Prefix of the scalar tags written by :meth:`scalars`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     if tensorboard_available():
        ...         with TensorBoardLog(d) as log:
        ...             log.scalars({"step": 1, "loss": 0.5, "note": "text is skipped"})
        ...             log.image("samples", torch.rand(3, 8, 8), step=1)
        ...     else:  # without the package there is nothing to show
        ...         _ = open(f"{d}/events.out.tfevents.0", "w").close()
        ...     [p.name[:18] for p in Path(d).iterdir()]
        ['events.out.tfevent']
    """

    def __init__(self, log_dir: str | os.PathLike, *, purge_step: int | None = None,
                 prefix: str = "train/") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoard logging needs the tensorboard package: "
                              "pip install 'sdeflow[eval]' (or pip install tensorboard)") from err
        if purge_step is not None and (isinstance(purge_step, bool) or
                                       not isinstance(purge_step, int) or purge_step < 0):
            raise ValueError(f"purge_step must be an integer >= 0 or None, got {purge_step!r}")
        self.log_dir, self.prefix = Path(log_dir), str(prefix)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _wait_past_existing_files(self.log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def scalars(self, record: Mapping[str, Any], step: int | None = None) -> None:
        """Write each number of ``record`` (booleans and the ``step`` entry aside) as the scalar
        ``prefix + key`` at ``step`` (default ``record["step"]``)."""
        step = record["step"] if step is None else step
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(self.prefix + key, value, step)

    def image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        """Write ``image``, of shape ``(C, H, W)`` with ``C`` = 1, 3 or 4 (floats in [0, 1], or
        ``uint8``), as the image ``tag`` at ``step``."""
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"image must have shape (C, H, W) with C in (1, 3, 4), got "
                             f"{tuple(image.shape)}")
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def image_file(self, tag: str, path: str | os.PathLike, step: int) -> None:
        """Write the picture in the file ``path`` (a PNG, say) as the image ``tag`` at
        ``step``."""
        from PIL import Image  # a dependency of matplotlib

        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        """Write the pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_past_existing_files(log_dir: Path) -> None:
    """Sleep until the current second is later than the creation second in the name of every
    event file in ``log_dir`` (only when one was created this second; a file dated later than
    that, from a skewed clock, is not waited for)."""
    seconds = [int(m.group(1)) for p in log_dir.iterdir()
               if (m := _EVENT_SECOND.match(p.name)) is not None]
    newest = max(seconds, default=-1)
    deadline = time.time() + 1.5
    while int(time.time()) <= newest and time.time() < deadline:
        time.sleep(0.05)
