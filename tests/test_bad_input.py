"""A bad-input corpus across the public API beyond the core objects (data, nets, likelihood,
training, CLI, interop, the test kit, sampling, priors, schedules, plotting, DDP helpers).

Each row is ``(call, expected exception type, regex)``. The regex must match the error message,
and it names the argument at fault (and, where useful, what was expected), so that a user who
reads only the message knows what to change. Every call raises: none returns a number, so no
bad input produces a silently wrong result. ``tests/test_core_bad_input.py`` covers the core
objects (grids, processes, trajectories, objectives) in depth; a few core rows here guard fixes
made with this corpus (non-finite ``lam``, ``LinearSchedule`` ends and ``x_final``; empty state
shapes).

CLI rows run ``sdeflow.cli.main`` in-process: an argparse error or an ``sdeflow: error:`` exit
becomes :class:`CLIError` carrying the exit code and what the command printed.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from sdeflow import (
    VPSDE,
    DenoisingScoreMatching,
    DiffFlowObjective,
    EulerMaruyama,
    ExponentialIntegrator,
    ForwardSDE,
    LinearSchedule,
    ReverseSDE,
    StandardNormal,
    StochasticHeun,
    TimeGrid,
    probability_flow,
    sample,
)
from sdeflow.data import (
    Digits,
    ToyPreprocessor,
    dequantize,
    load_cifar10,
    load_toy,
    sample_toy,
    write_tiny_cifar10_archive,
)
from sdeflow.interop import brownian_from_noise, sample_torchsde, solve_torchsde, to_torchsde
from sdeflow.likelihood import bits_per_dim, elbo_bits_per_dim, ode_log_likelihood
from sdeflow.nets import FourierMLP, UNet
from sdeflow.plotting import plot_samples_2d, save_image_grid
from sdeflow.testing import check_discretizer
from sdeflow.training import (
    EMA,
    CheckpointError,
    Checkpointing,
    DiffFlowModel,
    Logging,
    Optimization,
    ProgressiveSteps,
    TensorBatches,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)
from sdeflow.training.distributed import DistributedContext, ShardSampler, init_distributed

NAN, INF = float("nan"), float("inf")


# -- building blocks (small, CPU, float32 unless said) ----------------------------------------
def _grid(n: int = 4) -> TimeGrid:
    return TimeGrid.uniform(n, 1e-3, 0.5)


def _span(t0: float, t1: float, like: torch.Tensor) -> TimeGrid:
    """The one-step grid [t0, t1] in ``like``'s dtype (the likelihood's time description)."""
    return TimeGrid(torch.tensor([t0, t1], dtype=like.dtype, device=like.device))


def _forward() -> ForwardSDE:
    return ForwardSDE(lambda x, t: -x, 0.5)


def _reverse() -> ReverseSDE:
    return ReverseSDE(_forward(), lambda x, t: -x)


def _ode() -> ReverseSDE:
    return probability_flow(_forward(), lambda x, t: -x)


def _x(batch: int = 3, d: int = 2) -> torch.Tensor:
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(0))


def _diffflow_model() -> DiffFlowModel:
    return DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 0.2, _grid(),
                         StandardNormal((2,)))


class _Mean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2))

    def loss(self, batch, step):
        return (batch - self.mu).pow(2).mean(), {}


def _trainer(**kwargs) -> Trainer:
    kwargs.setdefault("steps", 2)
    return Trainer(_Mean(), TensorBatches(_x(16), 4), logging=Logging(progress=False), **kwargs)


def _checkpoint(tmp: Path, damage: str) -> Path:
    """A checkpoint in ``tmp`` damaged by ``damage``: truncated, flipped, foreign."""
    path = save_checkpoint({"w": torch.arange(100.0)}, tmp / "good.pt")
    data = path.read_bytes()
    bad = tmp / f"{damage}.pt"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # a byte of the stored tensor
        flipped = bytearray(data)
        flipped[data.index(torch.arange(100.0).numpy().tobytes()) + 200] ^= 0x01
        bad.write_bytes(bytes(flipped))
    elif damage == "foreign":
        bad.write_bytes(b"#!/bin/sh\necho not a checkpoint\n")
    return bad


def _archive(tmp: Path, truncate: bool) -> Path:
    """A tiny CIFAR-10 archive in ``tmp/data`` (truncated to half its bytes if asked)."""
    folder = tmp / "data"
    folder.mkdir()
    path = write_tiny_cifar10_archive(folder, n_train=10, n_test=4)
    if truncate:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return folder


class CLIError(Exception):
    """``sdeflow`` exited with a non-zero status; the message holds what it printed."""


def _one_line(stream: io.StringIO) -> str:
    return " ".join(stream.getvalue().split())


def _cli(*args: str) -> Callable[[Path], None]:
    def call(tmp: Path) -> None:
        from sdeflow.cli import main

        argv = [a.format(tmp=tmp) for a in args]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:
                message = exc.code if isinstance(exc.code, str) else ""
                raise CLIError(f"exit {exc.code!r}: {message} {_one_line(err)}") from None
        if code:
            raise CLIError(f"exit {code}: {_one_line(err)}")

    return call


def _cli_existing_files(tmp: Path, damage: str | None) -> None:
    """``sdeflow toy`` into a folder holding an unknown file, or a run whose checkpoint is
    damaged."""
    out = tmp / "run"
    args = ("toy", "--out", str(out), "--steps", "1", "--n-train", "20", "--n-test", "4",
            "--batch-size", "10", "--width", "8", "--depth", "1", "--n-samples", "10",
            "--n-grid", "4", "--no-progress")
    if damage is None:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        _cli(*args)(tmp)
        (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all " * 4)
    _cli(*args)(tmp)


def _cuda_only_skip():
    return pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


# -- the corpus ----------------------------------------------------------------------------------
CASES = [
    # priors, schedules, processes, sampling (core rows not in test_core_bad_input.py)
    pytest.param(lambda tmp: StandardNormal((0,)), ValueError, r"state_shape",
                 id="prior-empty-state"),
    pytest.param(lambda tmp: StandardNormal((2, -1)), ValueError, r"state_shape",
                 id="prior-negative-state"),
    pytest.param(lambda tmp: LinearSchedule(NAN, 1.0), ValueError, r"g0.*finite",
                 id="schedule-nan"),
    pytest.param(lambda tmp: LinearSchedule(0.1, INF), ValueError, r"g1=inf",
                 id="schedule-inf"),
    pytest.param(lambda tmp: ReverseSDE(_forward(), lambda x, t: -x, lam=INF), ValueError,
                 r"lam must be a finite", id="reverse-lam-inf"),
    pytest.param(lambda tmp: sample(_reverse(), StandardNormal((2,)), _grid(),
                                    x_final=torch.full((3, 2), NAN)),
                 ValueError, r"x_final must be finite", id="sample-nan-x_final"),
    pytest.param(lambda tmp: sample(ReverseSDE(ForwardSDE(FourierMLP(2, 8, 1).to("meta"), 0.5),
                                               lambda x, t: -x), StandardNormal((2,)), _grid(),
                                    (3,)),
                 ValueError, r"on meta but prior samples is on cpu", id="sample-device"),
    pytest.param(lambda tmp: sample(_reverse(), StandardNormal((2,)), _grid(), (3,),
                                    discretizer=ExponentialIntegrator()),
                 TypeError, r"ExponentialIntegrator needs a process with a declared linear",
                 id="sample-scheme"),
    pytest.param(lambda tmp: DiffFlowObjective(_reverse(), StandardNormal((2,)), _grid(),
                                               discretizer=StochasticHeun()),
                 TypeError, r"discretizer must have a Gaussian transition",
                 id="objective-heun"),
    pytest.param(lambda tmp: DenoisingScoreMatching(VPSDE(), lambda x, t: -x)(
        torch.ones(3, 2, dtype=torch.long)), TypeError, r"x0 must be a floating", id="dsm-int"),
    pytest.param(lambda tmp: DenoisingScoreMatching(VPSDE(), lambda x, t: -x, eps=0.0),
                 ValueError, r"eps must be in", id="dsm-eps"),
    # data
    pytest.param(lambda tmp: sample_toy("checkers", 4), ValueError, r"name must be one of.*"
                 r"checkerboard.*'checkers'", id="toy-name"),
    pytest.param(lambda tmp: sample_toy("moons", -1), ValueError, r"n must be non-negative",
                 id="toy-n-negative"),
    pytest.param(lambda tmp: sample_toy("moons", 2.5), TypeError, r"n must be an int",
                 id="toy-n-float"),
    pytest.param(lambda tmp: sample_toy("moons", 4, noise=NAN), ValueError, r"noise",
                 id="toy-noise-nan"),
    pytest.param(lambda tmp: sample_toy("moons", 4, dtype=torch.int64), TypeError,
                 r"dtype must be a floating", id="toy-dtype"),
    pytest.param(lambda tmp: load_toy("moons", 1, 5), ValueError, r"n_train must be >= 2",
                 id="load-toy-n_train"),
    pytest.param(lambda tmp: load_toy("moons", 10, 5, seed=-1), ValueError, r"seed",
                 id="load-toy-seed"),
    pytest.param(lambda tmp: ToyPreprocessor.fit(torch.ones(10, 2)), ValueError,
                 r"x must vary", id="toy-preprocessor-constant"),
    pytest.param(lambda tmp: load_cifar10(tmp / "absent", download=False), FileNotFoundError,
                 r"data_dir .*absent does not exist", id="cifar-missing-dir"),
    pytest.param(lambda tmp: load_cifar10(tmp, download=False), FileNotFoundError,
                 r"CIFAR-10 is not in .*cifar-10-python\.tar\.gz", id="cifar-missing-archive"),
    pytest.param(lambda tmp: load_cifar10(_archive(tmp, truncate=True), download=False),
                 RuntimeError, r"cifar-10-python\.tar\.gz fails its MD5 check",
                 id="cifar-truncated-verified"),
    pytest.param(lambda tmp: load_cifar10(_archive(tmp, truncate=True), verify=False,
                                          download=False),
                 RuntimeError, r"cifar-10-python\.tar\.gz is not a readable .*truncated or "
                 r"corrupt", id="cifar-truncated-unverified"),
    pytest.param(lambda tmp: Digits(test_fraction=1.5), ValueError, r"test_fraction",
                 id="digits-fraction"),
    pytest.param(lambda tmp: dequantize(torch.ones(3), 17), TypeError, r"k must be an integer",
                 id="dequantize-float"),
    # nets
    pytest.param(lambda tmp: FourierMLP(2, 8, 1)(torch.ones(3, 3), 0.1), ValueError,
                 r"x must have shape \(batch, \*state\) with 2 elements", id="mlp-x-shape"),
    pytest.param(lambda tmp: FourierMLP(2, 8, 1)(torch.ones(3, 2), torch.ones(4)), ValueError,
                 r"t must have shape \(\), \(1,\) or \(batch,\)=\(3,\)", id="mlp-t-shape"),
    pytest.param(lambda tmp: FourierMLP(2, 8, 1)(torch.ones(3, 2, dtype=torch.float64), 0.1),
                 TypeError, r"x has dtype torch.float64 but the FourierMLP's parameters",
                 id="mlp-dtype"),
    pytest.param(lambda tmp: FourierMLP(2, 8, 1).to("meta")(torch.ones(3, 2), 0.1), ValueError,
                 r"x is on cpu but the FourierMLP's parameters are on meta", id="mlp-device"),
    pytest.param(lambda tmp: FourierMLP(2, 8, 1, activation="sigmoid"), ValueError,
                 r"activation must be one of", id="mlp-activation"),
    pytest.param(lambda tmp: UNet(1, ch=8, ch_mult=(1, 2), image_size=7), ValueError,
                 r"image_size must be divisible", id="unet-image-size"),
    pytest.param(lambda tmp: UNet(1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                  attn_resolutions=(), image_size=8, num_groups=4)(
        torch.ones(2, 3, 8, 8), 0.1), ValueError, r"x must have shape \(batch, 1, 8, 8\)",
                 id="unet-x-shape"),
    # likelihood
    pytest.param(lambda tmp: ode_log_likelihood(_reverse(), StandardNormal((2,)), _span(0.0, 1.0,
                                                _x()), _x()),
                 ValueError, r"ode must have zero diffusion.*ReverseSDE", id="ode-not-an-ode"),
    pytest.param(lambda tmp: ode_log_likelihood(_ode(), StandardNormal((2,)), _span(0.0, 1.0,
                                                _x()), _x() * NAN),
                 ValueError, r"x0 must be finite", id="ode-nan"),
    pytest.param(lambda tmp: ode_log_likelihood(_ode(), StandardNormal((2,)), (0.0, 1.0), _x()),
                 TypeError, r"grid must be a TimeGrid", id="ode-times"),
    pytest.param(lambda tmp: ode_log_likelihood(_ode(), StandardNormal((2,)), _span(0.0, 1.0,
                                                _x()), _x(), trace="fast"),
                 ValueError, r"trace must be one of", id="ode-trace"),
    pytest.param(lambda tmp: ode_log_likelihood(_ode(), StandardNormal((2,)), _span(0.0, 1.0,
                                                _x()), _x(), n_probes=0),
                 ValueError, r"n_probes must be an integer >= 1", id="ode-probes"),
    pytest.param(lambda tmp: ode_log_likelihood(_ode(), StandardNormal((2,)), _span(0.0, 1.0,
                                                _x()), _x(0)),
                 ValueError, r"x0 must hold at least one sample", id="ode-empty"),
    pytest.param(lambda tmp: ode_log_likelihood(_ode(), StandardNormal((2,)), _span(0.0, 1.0,
                                                _x()), _x().double()),
                 TypeError, r"dtype torch.float32 but x0 has dtype torch.float64",
                 id="ode-dtype"),
    pytest.param(lambda tmp: bits_per_dim(torch.ones(3), 64, levels=1), ValueError,
                 r"levels must be an integer >= 2", id="bpd-levels"),
    pytest.param(lambda tmp: bits_per_dim(torch.ones(3), 0), ValueError,
                 r"dim must be an integer >= 1", id="bpd-dim"),
    pytest.param(lambda tmp: elbo_bits_per_dim(torch.ones(3)), TypeError,
                 r"terms must be DiffFlowTerms", id="elbo-bpd-type"),
    # training
    pytest.param(lambda tmp: _trainer(on_nonfinite="ignore"), ValueError,
                 r"on_nonfinite must be one of \('stop', 'skip'\)", id="trainer-nonfinite"),
    pytest.param(lambda tmp: _trainer(steps=0), ValueError, r"steps must be an integer >= 1",
                 id="trainer-steps"),
    pytest.param(lambda tmp: _trainer(optimization=Optimization(grad_clip=0.0)), ValueError,
                 r"Optimization.grad_clip must be a finite number > 0", id="trainer-clip"),
    pytest.param(lambda tmp: _trainer(checkpointing=Checkpointing(every=0)), ValueError,
                 r"Checkpointing.every must be an integer >= 1", id="trainer-checkpoint-every"),
    pytest.param(lambda tmp: Trainer(_Mean(), _x(16), steps=1), TypeError,
                 r"data must be a BatchSource", id="trainer-data"),
    pytest.param(lambda tmp: Trainer(nn.Linear(2, 2), TensorBatches(_x(16), 4), steps=1),
                 TypeError, r"model must have a loss\(batch, step\) method", id="trainer-model"),
    pytest.param(lambda tmp: _trainer(device="cuda"), ValueError,
                 r"device cuda requested but CUDA is not available", id="trainer-device",
                 marks=_cuda_only_skip()),
    pytest.param(lambda tmp: _trainer().fit(resume=True), ValueError,
                 r"resume=True needs an out_dir", id="trainer-resume-no-out-dir"),
    pytest.param(lambda tmp: TensorBatches(_x(4), 8), ValueError,
                 r"batch_size \* world_size = 8 exceeds the 4 samples", id="batches-too-large"),
    pytest.param(lambda tmp: load_checkpoint(tmp / "absent.pt"), CheckpointError,
                 r"checkpoint .*absent\.pt does not exist", id="checkpoint-missing"),
    pytest.param(lambda tmp: load_checkpoint(_checkpoint(tmp, "truncated")), CheckpointError,
                 r"checkpoint .*truncated\.pt is truncated", id="checkpoint-truncated"),
    pytest.param(lambda tmp: load_checkpoint(_checkpoint(tmp, "flipped")), CheckpointError,
                 r"checkpoint .*flipped\.pt is corrupt: CRC-32", id="checkpoint-corrupt"),
    pytest.param(lambda tmp: load_checkpoint(_checkpoint(tmp, "foreign")), CheckpointError,
                 r"checkpoint .*foreign\.pt is not an sdeflow checkpoint",
                 id="checkpoint-foreign"),
    pytest.param(lambda tmp: _trainer(out_dir=tmp).load_checkpoint(_checkpoint(tmp, "flipped")),
                 CheckpointError, r"flipped\.pt is corrupt", id="trainer-load-corrupt"),
    pytest.param(lambda tmp: DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 0.0,
                                           _grid(), StandardNormal((2,))),
                 ValueError, r"diffusion must be > 0 for DiffFlow", id="diffflow-model-g0"),
    pytest.param(lambda tmp: _diffflow_model().loss(_x(4, 3), 1), ValueError,
                 r"x0 must have shape \(batch, \*state\) with state \(2,\)",
                 id="diffflow-model-batch"),
    pytest.param(lambda tmp: _diffflow_model().loss(_x(4) * NAN, 1), ValueError,
                 r"x0 must be finite", id="diffflow-model-nan"),
    pytest.param(lambda tmp: ProgressiveSteps(0, 75, 100), ValueError,
                 r"n_start must be an integer >= 1", id="progressive"),
    pytest.param(lambda tmp: EMA(nn.Linear(2, 2), 1.5), ValueError, r"decay must be in \[0, 1\)",
                 id="ema-decay"),
    # interop
    pytest.param(lambda tmp: to_torchsde(lambda x, t: x, (2,)), TypeError,
                 r"sde must be an sdeflow SDE", id="torchsde-not-sde"),
    pytest.param(lambda tmp: to_torchsde(_reverse(), (2,), reverse=True), ValueError,
                 r"t_end must be given for reverse=True", id="torchsde-t_end"),
    pytest.param(lambda tmp: solve_torchsde(_forward(), _x(), _grid(), method="rk4"),
                 ValueError, r"method must be one of .*'rk4'", id="torchsde-method"),
    pytest.param(lambda tmp: solve_torchsde(_forward(), _x() * NAN, _grid()), ValueError,
                 r"x must be finite", id="torchsde-nan"),
    pytest.param(lambda tmp: solve_torchsde(_forward(), _x().double(), _grid()), TypeError,
                 r"grid.ts has dtype torch.float32 but x has dtype torch.float64",
                 id="torchsde-dtype"),
    pytest.param(lambda tmp: brownian_from_noise(_grid(4), torch.randn(3, 5, 2)), ValueError,
                 r"noise must have shape \(B, N=4", id="torchsde-noise"),
    pytest.param(lambda tmp: sample_torchsde(_reverse(), StandardNormal((2,)), _grid(),
                                             x_final=torch.randn(3, 3)),
                 ValueError, r"x_final must end in the prior's event_shape \(2,\)",
                 id="torchsde-x_final"),
    # the discretizer test kit
    pytest.param(lambda tmp: check_discretizer(EulerMaruyama), TypeError,
                 r"scheme must be a Discretizer instance, got the class EulerMaruyama",
                 id="kit-class"),
    # plotting
    pytest.param(lambda tmp: plot_samples_2d(torch.randn(5, 3), tmp / "a.png"), ValueError,
                 r"samples must have shape \(n, 2\)", id="plot-samples"),
    pytest.param(lambda tmp: save_image_grid(torch.randn(2, 2, 8, 8), tmp / "b.png"), ValueError,
                 r"images must have shape \(B, C, H, W\) with C in \(1, 3\)", id="plot-images"),
    # distributed helpers
    pytest.param(lambda tmp: init_distributed("cpu", env={"WORLD_SIZE": "2"}), ValueError,
                 r"WORLD_SIZE=2 but the environment lacks .*RANK", id="ddp-env"),
    pytest.param(lambda tmp: init_distributed("cpu", env={"WORLD_SIZE": "two"}), ValueError,
                 r"WORLD_SIZE must be an integer, got 'two'", id="ddp-world-size"),
    pytest.param(lambda tmp: ShardSampler(10, rank=2, world_size=2), ValueError,
                 r"rank must be an int in \[0, 2\)", id="ddp-shard-rank"),
    pytest.param(lambda tmp: DistributedContext(0, 1).split_batch_size(0), ValueError,
                 r"batch_size must be an int >= 1", id="ddp-batch-size"),
    # the command line
    pytest.param(_cli("toy", "--dataset", "checkers"), CLIError,
                 r"exit 2: .*argument --dataset: invalid choice: 'checkers'", id="cli-dataset"),
    pytest.param(_cli("toy", "--model", "gan"), CLIError,
                 r"exit 2: .*argument --model: invalid choice: 'gan'", id="cli-model"),
    pytest.param(_cli("train", "--preset", "cifar-z"), CLIError,
                 r"exit 2: .*argument --preset: invalid choice: 'cifar-z'", id="cli-preset"),
    pytest.param(_cli("train", "--preset", "toy-2d", "--set", "grid.t2=1"), CLIError,
                 r"exit 1: .*unknown key 't2' in \[grid\]", id="cli-recipe-key"),
    pytest.param(_cli("toy", "--steps", "0"), CLIError,
                 r"exit 2: .*argument --steps: must be a positive integer, got 0",
                 id="cli-steps"),
    pytest.param(_cli("toy", "--batch-size", "x"), CLIError,
                 r"exit 2: .*argument --batch-size", id="cli-batch-size-type"),
    pytest.param(lambda tmp: _cli_existing_files(tmp, None), CLIError,
                 r"holds files but no config\.json \(notes\.txt\).*--overwrite",
                 id="cli-out-not-a-run"),
    pytest.param(lambda tmp: _cli_existing_files(tmp, "garbage"), CLIError,
                 r"checkpoint\.pt", id="cli-resume-corrupt"),
]


@pytest.mark.parametrize(("call", "error", "pattern"), CASES)
def test_bad_input_raises_a_clear_error(call, error, pattern, tmp_path):
    with pytest.raises(error, match=pattern):
        call(tmp_path)


def test_the_corpus_is_large_and_broad():
    assert len(CASES) >= 30
    areas = {p.id.split("-")[0] for p in CASES}
    for area in ("prior", "sample", "toy", "cifar", "mlp", "unet", "ode", "trainer", "checkpoint",
                 "torchsde", "kit", "cli", "ddp"):
        assert area in areas, f"no bad-input row for {area}"
