r"""Training: the :class:`Trainer` loop, the model families it trains, and its parts
(grouped options, EMA weights, atomic checkpoints, batch sources, a progressive number of time
steps)."""

from sdeflow.training.batches import BatchSource, TensorBatches, batch_to
from sdeflow.training.checkpoint import (
    CheckpointError,
    kept_checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from sdeflow.training.distributed import (
    DistributedContext,
    LossModule,
    ShardSampler,
    init_distributed,
)
from sdeflow.training.ema import EMA
from sdeflow.training.interrupts import TrainingInterrupted
from sdeflow.training.memory import retain_freed_memory
from sdeflow.training.models import DiffFlowModel, FlowModel, GenerativeModel, ScoreModel
from sdeflow.training.options import (
    LR_DECAYS,
    Checkpointing,
    EMAConfig,
    Logging,
    Optimization,
    Plots,
    lr_decay,
    step_lr,
)
from sdeflow.training.path_model import PathMatchingModel
from sdeflow.training.progressive import (
    STEPS_SCHEDULES,
    FixedSteps,
    ProgressiveSteps,
    SteppedSteps,
    StepsSchedule,
)
from sdeflow.training.tensorboard import TensorBoardLog, tensorboard_available
from sdeflow.training.trainer import NonFiniteError, Trainer, select_device

__all__ = [
    "DistributedContext",
    "LossModule",
    "ShardSampler",
    "init_distributed",
    "BatchSource",
    "CheckpointError",
    "Checkpointing",
    "EMAConfig",
    "Logging",
    "Optimization",
    "Plots",
    "TrainingInterrupted",
    "step_lr",
    "lr_decay",
    "LR_DECAYS",
    "DiffFlowModel",
    "EMA",
    "FixedSteps",
    "FlowModel",
    "GenerativeModel",
    "PathMatchingModel",
    "NonFiniteError",
    "ProgressiveSteps",
    "STEPS_SCHEDULES",
    "ScoreModel",
    "SteppedSteps",
    "StepsSchedule",
    "TensorBatches",
    "batch_to",
    "Trainer",
    "kept_checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "TensorBoardLog",
    "tensorboard_available",
    "retain_freed_memory",
    "save_checkpoint",
    "select_device",
    "verify_checkpoint",
]
