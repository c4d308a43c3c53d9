r"""The data of a run: a recipe's data set loaded once, its batches, and the map back to data.

Two kinds of data, told apart by the shape of one state (:func:`sdeflow.recipes.state_shape`):

- **points** (a built-in 2D set, ``data.dataset`` one of :data:`sdeflow.data.TOY_DATASETS`):
  ``data.train_size`` training and ``data.val_size`` test points drawn from the run's seed and
  standardized by the map fitted on the training points (:func:`sdeflow.data.load_toy`); the
  NLL in data coordinates adds :math:`\log|\det \partial T/\partial x|` of that map; with
  ``model.num_classes`` the points come with their class labels
  (:func:`sdeflow.data.load_toy_labeled`) and the batches are pairs ``(x, y)``;
- **images** (``cifar10``, ``mnist``): the ``uint8`` images of ``--data-dir`` (MD5-checked),
  scaled as the recipe says (:class:`ImageBatches`), or for ``--smoke`` a tiny data set written
  in the real file format into the run folder.

Batches come from a :class:`~sdeflow.training.TensorBatches` per process: the recipe's
``train.batch_size`` is the batch of *each* process, as in the official code (100 per GPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeflow.training.batches import TensorBatches

__all__ = ["DataSource", "RunData", "ImageBatches", "load_run_data", "default_source"]


@dataclass(frozen=True)
class DataSource:
    """Where a run's data come from: ``dir`` (``None`` for the generated 2D sets), whether the
    files' checksums are verified, and whether a tiny stand-in is generated (``--smoke``)."""

    dir: str | None = None
    verify: bool = True
    generated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"dir": self.dir, "verify": self.verify, "generated": self.generated}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DataSource:
        d = d or {}
        return cls(d.get("dir"), bool(d.get("verify", True)), bool(d.get("generated", False)))


class ImageBatches:
    r"""Batches of ``uint8`` images as floats on ``[-1, 1]`` as the recipe says: :math:`2k/255
    - 1` (official), or uniformly dequantized :math:`2(k + u)/256 - 1` (``dequantize``), with
    a random horizontal flip per image (``random_flip``).

    The noise comes from torch's global generator, which the trainer checkpoints; the order of
    the images from the wrapped :class:`~sdeflow.training.TensorBatches` (sharded by rank).
    With ``channels_last`` the batches are laid out in ``torch.channels_last`` (same values).

    Example:
        >>> import torch
        >>> from sdeflow.training import TensorBatches
        >>> k = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
        >>> batches = ImageBatches(TensorBatches(k, 4), dequantize=False, random_flip=False)
        >>> x = batches.next_batch()
        >>> x.shape, bool(x.min() >= -1 and x.max() <= 1)
        (torch.Size([4, 1, 4, 4]), True)
    """

    def __init__(self, source: TensorBatches, *, dequantize: bool = True,
                 random_flip: bool = True, channels_last: bool = False) -> None:
        self.source, self.dequantize, self.random_flip = source, dequantize, random_flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next_batch(self) -> Tensor:
        from sdeflow.recipes.data import scale_images

        k = self.source.next_batch()
        x = scale_images(k, dequantize=self.dequantize)
        if self.random_flip:
            flip = torch.rand(k.shape[0]) < 0.5
            x = torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
        return x.contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


@dataclass
class RunData:
    r"""A run's data set: ``train`` and ``test`` (points standardized, images ``uint8``),
    ``kind`` (``"points"`` or ``"images"``), ``to_data`` (model space to data coordinates:
    the inverse standardization, or 8-bit images), ``log_abs_det`` (of the standardization,
    0 for images) and, for a conditional recipe, ``train_labels`` and ``test_labels``."""

    kind: str
    train: Tensor
    test: Tensor
    to_data: Callable[[Tensor], Tensor]
    log_abs_det: float = 0.0
    preprocessor: Any = field(default=None, repr=False)
    train_labels: Tensor | None = field(default=None, repr=False)
    test_labels: Tensor | None = field(default=None, repr=False)

    def batches(self, recipe: dict[str, Any], *, seed: int, rank: int = 0, world_size: int = 1,
                channels_last: bool = False):
        """The training batches: ``train.batch_size`` per process, shuffled by ``seed + 1``."""
        source = TensorBatches(self.train, recipe["train"]["batch_size"], seed=seed + 1,
                               rank=rank, world_size=world_size, labels=self.train_labels)
        if self.kind == "points":
            return source
        return ImageBatches(source, dequantize=recipe["data"]["dequantize"],
                            random_flip=recipe["data"]["random_flip"],
                            channels_last=channels_last)


def _points(recipe: dict[str, Any], seed: int) -> RunData:
    from sdeflow.data import load_toy, load_toy_labeled

    data = recipe["data"]
    if "num_classes" in recipe.get("model", {}):
        (train, train_y), (test, test_y), pre = load_toy_labeled(
            data["dataset"], int(data["train_size"]), int(data["val_size"]), seed=seed)
        return RunData("points", train, test, pre.inverse, float(pre.log_abs_det), pre,
                       train_y, test_y)
    train, test, pre = load_toy(data["dataset"], int(data["train_size"]),
                                int(data["val_size"]), seed=seed)
    return RunData("points", train, test, pre.inverse, float(pre.log_abs_det), pre)


def _images(recipe: dict[str, Any], source: DataSource, *, download: bool) -> RunData:
    from sdeflow.recipes.data import load_images, to_uint8, write_tiny_archives

    dataset = recipe["data"]["dataset"]
    folder = Path(source.dir)
    if source.generated and not (folder / ".complete").exists():
        # one stand-in data set per folder, whatever the run's seed (it outlives --overwrite)
        write_tiny_archives(dataset, folder, n_train=64, n_test=16, seed=0)
        (folder / ".complete").touch()
    resize = str(recipe["data"].get("resize", "pad"))
    try:
        train = load_images(dataset, folder, train=True, verify=source.verify,
                            download=download, resize=resize)
        test = load_images(dataset, folder, train=False, verify=source.verify, resize=resize)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise FileNotFoundError(f"--data-dir {folder}: {err}") from err
    dequantized = bool(recipe["data"]["dequantize"])
    return RunData("images", train, test, lambda x: to_uint8(x, dequantized=dequantized))


def load_run_data(recipe: dict[str, Any], source: DataSource, *, seed: int,
                  download: bool = False) -> RunData:
    """Load (or draw, or generate) the data of ``recipe`` from ``source``.

    Raises:
        FileNotFoundError: Image files missing or failing their checksum (the message names
            the folder and the file).
        ValueError: An image recipe without a data folder.

    Example:
        >>> from sdeflow.recipes import apply_overrides, load_recipe
        >>> recipe = apply_overrides(load_recipe("toy-2d"), [
        ...     "data.dataset=moons", "data.train_size=64", "data.val_size=16"])
        >>> data = load_run_data(recipe, DataSource(), seed=0)
        >>> data.kind, tuple(data.train.shape), tuple(data.test.shape)
        ('points', (64, 2), (16, 2))
    """
    from sdeflow.recipes import state_shape

    if len(state_shape(recipe)) == 1:
        return _points(recipe, seed)
    if source.dir is None:
        raise ValueError(f"the {recipe['data']['dataset']} recipe needs --data-dir (the folder "
                         f"of its files), or --smoke for a tiny generated data set")
    return _images(recipe, source, download=download)


def default_source(recipe: dict[str, Any], data_dir: str | os.PathLike | None, *,
                   out: Path, smoke: bool, verify: bool = True) -> DataSource:
    """The :class:`DataSource` of a training command: the 2D sets are drawn (no folder); an
    image recipe reads ``data_dir``, or with ``smoke`` and no ``data_dir`` a tiny data set
    generated in ``out/data``."""
    from sdeflow.recipes import state_shape

    if len(state_shape(recipe)) == 1:
        return DataSource(None, True, True)
    if data_dir is None and smoke:
        return DataSource(str((out / "data").resolve()), False, True)
    if data_dir is None:
        return DataSource(None, verify, False)
    return DataSource(str(Path(data_dir).resolve()), verify, False)
