"""Conditioning and classifier-free guidance through every part (sdeflow.conditioning): a
condition reaches the networks through processes, objectives, samplers, the likelihood, the
distributions, the model families, the trainer and the recipes; guidance 0 is the unconditional
model and 1 the conditional one, exactly; unconditional code is untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdeflow import (
    VPSDE,
    Backprop,
    DenoisingScoreMatching,
    DiffFlowObjective,
    FlowNLL,
    ForwardSDE,
    LinearPath,
    PathMatching,
    PathODE,
    ProbabilityFlowDistribution,
    ReverseSDE,
    SDESamplerDistribution,
    Sharded,
    StandardNormal,
    StochasticAdjoint,
    TimeGrid,
    ode_log_likelihood,
    probability_flow,
    sample,
)
from sdeflow.conditioning import (
    Bound,
    Guided,
    bind,
    drop_condition,
    guided,
    null_condition,
    split_batch,
)
from sdeflow.data import load_toy_labeled, toy_labels, two_gaussians
from sdeflow.nets import ConditionalFourierMLP, ConditionalTimeMLP, FourierMLP
from sdeflow.training import (
    DiffFlowModel,
    FlowModel,
    Logging,
    Optimization,
    PathMatchingModel,
    ScoreModel,
    TensorBatches,
    Trainer,
)

DT = torch.float64


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels(n: int, k: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=seeded(seed))


def cond_net(width: int = 16, **kw) -> nn.Module:
    torch.manual_seed(0)
    return ConditionalFourierMLP(2, width, 1, **({"num_classes": 2} | kw)).to(DT)


def diffflow_parts(drift: nn.Module | None = None, score: nn.Module | None = None):
    drift = cond_net() if drift is None else drift
    score = cond_net() if score is None else score
    reverse = ReverseSDE(ForwardSDE(drift, 0.5), score)
    return reverse, StandardNormal((2,), dtype=DT), TimeGrid.uniform(6, 1e-3, 0.5, dtype=DT)


# -- the required behaviour: conditional samples land in their class ---------------------------


def test_conditional_path_matching_samples_land_in_their_class():
    x, y = two_gaussians(4000, generator=seeded(0))
    torch.manual_seed(0)
    model = PathMatchingModel(ConditionalTimeMLP(2, 64, 2, num_classes=2), LinearPath(),
                              TimeGrid.uniform(10, 0.0, 1.0), (2,), p_uncond=0.1)
    Trainer(model, TensorBatches(x, 256, labels=y), steps=300, ema=None,
            optimization=Optimization(lr=3e-3), logging=Logging(progress=False)).fit()
    grid = TimeGrid.uniform(20, 0.0, 1.0)
    for guidance in (1.0, 3.0):
        for cls in (0, 1):
            s = model.sample(500, condition=torch.tensor(cls), guidance=guidance, grid=grid)
            in_class = ((s[:, 0] > 0).long() == cls).float().mean()
            assert in_class >= 0.95, (guidance, cls, float(in_class))
    # without a condition (guidance 0): the unconditional model, both classes
    s = model.sample(1000, grid=grid)
    assert 0.3 < float((s[:, 0] > 0).float().mean()) < 0.7
    # log p(x | y) prefers the right class
    xs = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    own = model.log_likelihood(xs, condition=torch.tensor([1, 0]))
    other = model.log_likelihood(xs, condition=torch.tensor([0, 1]))
    assert bool((own > other + 3).all())


def test_conditional_score_model_samples_land_in_their_class_with_lam_1():
    x, y = two_gaussians(4000, generator=seeded(2))
    torch.manual_seed(0)
    model = ScoreModel(ConditionalFourierMLP(2, 64, 2, num_classes=2), VPSDE(), (2,),
                       sample_steps=100, p_uncond=0.1)
    Trainer(model, TensorBatches(x, 256, labels=y), steps=400, ema=None,
            optimization=Optimization(lr=3e-3), logging=Logging(progress=False)).fit()
    for cls in (0, 1):
        s = model.sample(500, condition=torch.tensor(cls), guidance=2.0)
        assert ((s[:, 0] > 0).long() == cls).float().mean() >= 0.95


# -- guidance 0 is the unconditional model, 1 the conditional one --------------------------------


def test_guided_is_the_cfg_combination_and_its_ends_are_exact():
    net = cond_net()
    x, t, y = torch.randn(5, 2, dtype=DT), torch.rand(5, dtype=DT), labels(5)
    v0, v1 = net(x, t), net(x, t, y)
    assert torch.equal(v0, net(x, t, net.null_condition(y)))
    for w in (-0.5, 0.5, 2.0, 7.0):
        assert torch.allclose(guided(net, y, w)(x, t), v0 + w * (v1 - v0), atol=1e-12)
        assert torch.allclose(Guided(net, y, w)(x, t[:1]), net(x, t[:1]) + w * (
            net(x, t[:1], y) - net(x, t[:1])), atol=1e-12)
    assert torch.equal(guided(net, y, 0.0)(x, t), v0)
    assert torch.equal(guided(net, y, 1.0)(x, t), v1)
    # vectors: the null is the zero vector, which adds nothing
    vnet = cond_net(num_classes=None, condition_dim=3)
    c = torch.randn(5, 3, dtype=DT)
    assert torch.equal(vnet.null_condition(c), torch.zeros_like(c))
    assert torch.allclose(guided(vnet, c, 2.0)(x, t),
                          2 * vnet(x, t, c) - vnet(x, t), atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_guidance_0_samples_equal_the_unconditional_model_and_1_the_conditional(lam):
    reverse, prior, grid = diffflow_parts()
    reverse = reverse.with_lam(lam)
    y, x_final = labels(8), torch.randn(8, 2, dtype=DT)
    start = {"x_final": x_final, "generator": seeded()}
    unconditional = sample(reverse, prior, grid, **start)
    start["generator"] = seeded()
    assert torch.equal(sample(reverse, prior, grid, condition=y, guidance=0.0, **start),
                       unconditional)
    bound = ReverseSDE(ForwardSDE(Bound(reverse.forward_sde.drift_fn, y), 0.5),
                       Bound(reverse.score, y), lam)
    conditional = sample(bound, prior, grid, x_final=x_final, generator=seeded())
    assert torch.equal(sample(reverse, prior, grid, x_final=x_final, generator=seeded(),
                              condition=y), conditional)
    assert not torch.equal(conditional, unconditional)
    # guidance of both networks is guidance of the reverse drift f - kappa s
    w, x, t = 2.5, torch.randn(8, 2, dtype=DT), torch.tensor(0.3, dtype=DT)
    drift = reverse.conditioned(y, w).drift(x, t)
    d0, d1 = reverse.drift(x, t), reverse.conditioned(y).drift(x, t)
    assert torch.allclose(drift, d0 + w * (d1 - d0), atol=1e-12)


def test_guidance_0_likelihood_equals_the_unconditional_model():
    path, net = LinearPath(), cond_net()
    ode, prior = PathODE(path, net), StandardNormal((2,), dtype=DT)
    grid, x, y = TimeGrid.uniform(4, 0.0, 1.0, dtype=DT), torch.randn(6, 2, dtype=DT), labels(6)
    opts = {"rtol": 1e-7, "atol": 1e-7}
    base = ode_log_likelihood(ode, prior, grid, x, **opts).log_prob
    assert torch.equal(ode_log_likelihood(ode, prior, grid, x, condition=y, guidance=0.0,
                                          **opts).log_prob, base)


# -- a conditional likelihood is the likelihood of the bound process -----------------------------


def test_conditional_ode_likelihood_equals_the_bound_process():
    net = cond_net()
    prior, grid = StandardNormal((2,), dtype=DT), TimeGrid.uniform(4, 0.0, 1.0, dtype=DT)
    x, y = torch.randn(6, 2, dtype=DT), labels(6)
    opts = {"rtol": 1e-7, "atol": 1e-7}
    got = ode_log_likelihood(PathODE(LinearPath(), net), prior, grid, x, condition=y, **opts)
    want = ode_log_likelihood(PathODE(LinearPath(), Bound(net, y)), prior, grid, x, **opts)
    assert torch.equal(got.log_prob, want.log_prob)
    assert torch.equal(got.log_prob, ode_log_likelihood(
        PathODE(LinearPath(), net).conditioned(y), prior, grid, x, **opts).log_prob)
    # the probability-flow ODE of DiffFlow, guided
    reverse, prior, grid = diffflow_parts()
    ode = probability_flow(reverse.forward_sde, reverse.score)
    got = ode_log_likelihood(ode, prior, grid, x, condition=y, guidance=2.0, **opts).log_prob
    want = ode_log_likelihood(ode.conditioned(y, 2.0), prior, grid, x, **opts).log_prob
    assert torch.equal(got, want)


# -- unconditional code is unchanged -------------------------------------------------------------


def test_an_unconditional_process_is_itself_and_its_results_are_unchanged():
    drift, score = FourierMLP(2, 16, 1).to(DT), FourierMLP(2, 16, 1).to(DT)
    reverse, prior, grid = diffflow_parts(drift, score)
    assert reverse.conditioned(labels(4)) is reverse
    assert bind(drift, labels(4)) is drift
    x0 = torch.randn(7, 2, dtype=DT)
    objective = DiffFlowObjective(reverse, prior, grid)
    a = objective(x0, generator=seeded())
    b = objective(x0, generator=seeded(), condition=None)
    assert torch.equal(a.nelbo, b.nelbo)
    x_final = torch.randn(5, 2, dtype=DT)
    assert torch.equal(sample(reverse, prior, grid, x_final=x_final, generator=seeded()),
                       sample(reverse, prior, grid, x_final=x_final, generator=seeded(),
                              condition=None))
    ode = probability_flow(reverse.forward_sde, score)
    assert torch.equal(ode_log_likelihood(ode, prior, grid, x0).log_prob,
                       ode_log_likelihood(ode, prior, grid, x0, condition=None).log_prob)


def test_an_unconditional_network_needs_no_change_beside_a_conditional_one():
    calls = []

    class PlainDrift(nn.Module):  # a user's network: two arguments, no declaration
        def __init__(self):
            super().__init__()
            self.net = FourierMLP(2, 16, 1).to(DT)

        def forward(self, x, t):
            calls.append(x.shape[0])
            return self.net(x, t)

    reverse, prior, grid = diffflow_parts(drift=PlainDrift())
    y = labels(6)
    assert reverse.conditioned(y).forward_sde is reverse.forward_sde  # only the score is bound
    terms = DiffFlowObjective(reverse, prior, grid)(torch.randn(6, 2, dtype=DT), condition=y)
    terms.loss.backward()
    assert calls and set(calls) == {6}
    assert sample(reverse, prior, grid, 6, condition=y, guidance=3.0).shape == (6, 2)


# -- Sharded equals Backprop with conditions -----------------------------------------------------


@pytest.mark.parametrize("inner", [Backprop(), StochasticAdjoint()])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sharded_equals_backprop_with_a_condition(inner, guidance):
    reverse, prior, grid = diffflow_parts()
    x0, y = torch.randn(7, 2, dtype=DT), labels(7)
    noise = torch.randn(grid.n_steps, 7, 2, dtype=DT, generator=seeded(3))
    params = list(reverse.parameters())
    results = []
    for gradient in (Backprop(), Sharded(inner, shards=3)):
        objective = DiffFlowObjective(reverse, prior, grid, gradient=gradient)
        terms = objective(x0, noise=noise, condition=y, guidance=guidance)
        results.append((terms.nelbo.detach(), torch.autograd.grad(terms.loss, params)))
    (v0, g0), (v1, g1) = results
    assert torch.allclose(v0, v1, rtol=0, atol=1e-10)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    # the condition matters: another one gives other values
    other = DiffFlowObjective(reverse, prior, grid)(x0, noise=noise, condition=1 - y)
    assert not torch.allclose(other.nelbo, v0)


# -- objectives: the condition, its dropout and their draws --------------------------------------


def test_objectives_with_a_condition_equal_their_bound_networks():
    net, y = cond_net(), labels(8)
    x0 = torch.randn(8, 2, dtype=DT)
    pm = PathMatching(LinearPath(), net)(x0, seeded(), condition=y)
    assert torch.equal(pm.values, PathMatching(LinearPath(), Bound(net, y))(x0, seeded()).values)
    dsm = DenoisingScoreMatching(VPSDE(), net)(x0, seeded(), condition=y)
    assert torch.equal(dsm.values,
                       DenoisingScoreMatching(VPSDE(), Bound(net, y))(x0, seeded()).values)
    # the flow's exact NLL: the batched Jacobian equals the per-sample vmapped one
    prior, grid = StandardNormal((2,), dtype=DT), TimeGrid.uniform(3, 0.0, 0.5, dtype=DT)
    flow = ForwardSDE(net, 0.0)
    nll = FlowNLL(flow, prior, grid)(x0, condition=y).nll
    each = torch.cat([FlowNLL(ForwardSDE(Bound(net, y[i:i + 1]), 0.0), prior, grid)(
        x0[i:i + 1]).nll for i in range(8)])
    assert torch.allclose(nll, each, atol=1e-12)


def test_condition_dropout_draws_last_from_the_generator():
    net, y = cond_net(), labels(64)
    x0 = torch.randn(64, 2, dtype=DT)
    plain = PathMatching(LinearPath(), net)(x0, seeded(), condition=y)
    dropped = PathMatching(LinearPath(), net, p_uncond=0.5)(x0, seeded(), condition=y)
    assert torch.equal(plain.t, dropped.t)  # same times and noise, then the dropout
    g = seeded()
    torch.rand(64, generator=g, dtype=DT), torch.randn(64, 2, generator=g, dtype=DT)
    kept = drop_condition(y, net.null_condition(y), 0.5, g)
    assert 0 < int((kept == 2).sum()) < 64
    manual = PathMatching(LinearPath(), Bound(net, kept))(x0, seeded()).values
    assert torch.equal(dropped.values, manual)
    assert drop_condition(y, net.null_condition(y), 0.0) is y


def test_diffflow_dropout_drops_both_networks_together():
    reverse, prior, grid = diffflow_parts()
    x0, y = torch.randn(6, 2, dtype=DT), labels(6)
    always = DiffFlowObjective(reverse, prior, grid, p_uncond=0.999999)
    got = always(x0, generator=seeded(), condition=y).nelbo
    want = DiffFlowObjective(reverse, prior, grid)(x0, generator=seeded()).nelbo  # null = none
    assert torch.equal(got, want)


# -- distributions and model families ------------------------------------------------------------


def test_a_conditioned_distribution_has_the_condition_as_batch_shape():
    reverse, prior, grid = diffflow_parts()
    y = labels(3)
    d = ProbabilityFlowDistribution(reverse, prior, grid, condition=y, rtol=1e-7, atol=1e-7)
    assert d.batch_shape == (3,) and d.event_shape == (2,)
    x = d.sample((4,), generator=seeded())
    assert x.shape == (4, 3, 2)
    log_p = d.log_prob(x)
    assert log_p.shape == (4, 3)
    want = ode_log_likelihood(reverse.with_lam(0.0), prior, grid, x.reshape(12, 2),
                              condition=y.repeat(4), rtol=1e-7, atol=1e-7).log_prob
    assert torch.allclose(log_p.reshape(12), want, atol=1e-10)
    x2, log_p2 = d.sample_and_log_prob((2,), generator=seeded())
    assert torch.allclose(log_p2, d.log_prob(x2), atol=1e-5)
    assert d.expand((5, 3)).sample().shape == (5, 3, 2)
    s = SDESamplerDistribution(reverse, prior, grid, condition=y, guidance=2.0, denoise=False,
                               log_prob_surrogate="elbo")
    assert s.sample((2,), generator=seeded()).shape == (2, 3, 2)
    assert s.log_prob(torch.zeros(2, 3, 2, dtype=DT)).shape == (2, 3)
    assert s.probability_flow().batch_shape == (3,)


@pytest.mark.parametrize("family", ["diffflow", "score", "flow", "path"])
def test_every_family_passes_a_condition_through(family):
    net = lambda: ConditionalFourierMLP(2, 16, 1, num_classes=2)  # noqa: E731
    grid = TimeGrid.uniform(4, 1e-3, 0.5)
    if family == "diffflow":
        model = DiffFlowModel(net(), net(), 0.3, grid, StandardNormal((2,)), jitter=False,
                              p_uncond=0.2, guidance=2.0)
    elif family == "score":
        model = ScoreModel(net(), VPSDE(), (2,), sample_steps=4, elbo_steps=4, p_uncond=0.2)
    elif family == "flow":
        model = FlowModel(net(), grid, StandardNormal((2,)), jitter=False, p_uncond=0.2)
    else:
        model = PathMatchingModel(net(), LinearPath(), TimeGrid.uniform(4, 0.0, 0.9), (2,),
                                  p_uncond=0.2)
    x, y = torch.randn(8, 2), labels(8)
    loss, _ = model.loss((x, y), step=1)
    loss.backward()
    assert model.sample(3).shape == (3, 2)  # no condition: the unconditional model
    assert model.sample(3, condition=torch.tensor(1)).shape == (3, 2)
    assert model.sample(3, condition=labels(3), guidance=0.0).shape == (3, 2)
    assert model.nelbo(x, condition=y).shape == (8,)
    assert model.log_likelihood(x[:2], condition=y[:2]).shape == (2,)
    assert model.distribution(condition=y[:2]).sample((2,)).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="needs a condition"):
        model.sample(3, guidance=5.0)


def test_trainer_takes_labelled_batches_and_resumes(tmp_path):
    x, y = two_gaussians(256, generator=seeded(0))

    def run(steps):
        torch.manual_seed(0)
        model = PathMatchingModel(ConditionalTimeMLP(2, 16, 1, num_classes=2), LinearPath(),
                                  TimeGrid.uniform(4, 0.0, 1.0), (2,), p_uncond=0.1)
        trainer = Trainer(model, TensorBatches(x, 32, labels=y), steps=steps, out_dir=tmp_path,
                          logging=Logging(progress=False))
        trainer.fit(resume=True)
        return trainer

    run(3)
    resumed = run(6)
    torch.manual_seed(0)
    fresh = Trainer(PathMatchingModel(ConditionalTimeMLP(2, 16, 1, num_classes=2), LinearPath(),
                                      TimeGrid.uniform(4, 0.0, 1.0), (2,), p_uncond=0.1),
                    TensorBatches(x, 32, labels=y), steps=6, logging=Logging(progress=False))
    fresh.fit()
    for a, b in zip(resumed.model.parameters(), fresh.model.parameters()):
        assert torch.equal(a, b)


def test_labelled_toy_sets_label_their_parts():
    (x, y), (xt, yt), pre = load_toy_labeled("8gaussians", 400, 100, seed=0)
    assert sorted(set(y.tolist())) == list(range(8)) and yt.shape == (100,)
    raw = pre.inverse(x.double())
    angle = torch.atan2(raw[:, 1], raw[:, 0])
    assert torch.allclose(torch.cos(angle - y * torch.pi / 4), torch.ones(400, dtype=DT),
                          atol=0.2)
    from sdeflow.data import load_toy

    assert torch.equal(load_toy("8gaussians", 400, 100, seed=0)[0], x)
    assert toy_labels("moons", torch.tensor([[0.0, 1.0], [1.0, -0.5]])).tolist() == [0, 1]
    assert split_batch((x, y))[1] is y and split_batch(x)[1] is None


# -- recipes -------------------------------------------------------------------------------------


def test_a_conditional_recipe_builds_trains_and_samples():
    from sdeflow.recipes import apply_overrides, build_model, load_recipe
    from sdeflow.runs.data import DataSource, load_run_data

    recipe = apply_overrides(load_recipe("flow-matching"), [
        "model.num_classes=2", "model.p_uncond=0.1", "model.guidance=2.0", "drift.width=16",
        "drift.depth=1", "data.train_size=64", "data.val_size=16", "train.batch_size=16"])
    model = build_model(recipe)
    assert isinstance(model.net, ConditionalTimeMLP) and model.guidance == 2.0
    assert model.objective.p_uncond == 0.1
    data = load_run_data(recipe, DataSource(), seed=0)
    batch = data.batches(recipe, seed=0).next_batch()
    assert isinstance(batch, tuple) and batch[1].shape == (16,)
    model.loss(batch, 1)[0].backward()
    assert model.sample(4, condition=torch.tensor(0), grid=TimeGrid.uniform(3, 0.0, 1.0)
                        ).shape == (4, 2)
    score = build_model(apply_overrides(load_recipe("toy-2d"), [
        "model.family=score", "model.num_classes=5", "score.width=16", "score.depth=1"]))
    assert isinstance(score.score_net, ConditionalFourierMLP)


@pytest.mark.parametrize("overrides, match", [
    (["model.num_classes=3"], "labelled data set with 3 classes"),
    (["model.p_uncond=0.1"], "needs model.num_classes"),
    (["model.num_classes=2", "model.p_uncond=1.0"], "p_uncond must be in"),
    (["model.num_classes=2", "model.guidance=-1.0"], "guidance must be"),
    (["model.num_classes=2", "data.dataset=swissroll"], "labelled data set"),
])
def test_conditional_recipe_errors_name_the_key(overrides, match):
    from sdeflow.recipes import apply_overrides, load_recipe

    with pytest.raises(ValueError, match=match):
        apply_overrides(load_recipe("flow-matching"), overrides)


# -- clear errors --------------------------------------------------------------------------------


def test_clear_errors():
    reverse, prior, grid = diffflow_parts()
    plain, _, _ = diffflow_parts(FourierMLP(2, 8, 1).to(DT), FourierMLP(2, 8, 1).to(DT))
    with pytest.raises(ValueError, match="one entry per sample, batch 5"):
        sample(reverse, prior, grid, 5, condition=labels(4))
    with pytest.raises(ValueError, match="condition= was given but nothing in ReverseSDE"):
        sample(plain, prior, grid, 5, condition=labels(5))
    with pytest.raises(ValueError, match="must be finite"):
        vnet = cond_net(num_classes=None, condition_dim=2)
        c = torch.randn(5, 2, dtype=DT)
        c[2, 1] = float("nan")
        PathMatching(LinearPath(), vnet)(torch.randn(5, 2, dtype=DT), condition=c)
    with pytest.raises(ValueError, match="guidance=2.0 needs a condition"):
        sample(reverse, prior, grid, 5, guidance=2.0)
    with pytest.raises(ValueError, match="class labels must be in"):
        reverse.score(torch.zeros(2, 2, dtype=DT), 0.1, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=">= 0"):
        sample(reverse, prior, grid, 2, condition=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="vector condition must have shape"):
        sample(reverse, prior, grid, 2, condition=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="condition must be a tensor"):
        sample(reverse, prior, grid, 2, condition=[0, 1])
    with pytest.raises(ValueError, match="takes a condition"):
        ode_log_likelihood(probability_flow(plain.forward_sde, plain.score), prior, grid,
                           torch.zeros(2, 2, dtype=DT), condition=labels(2))
    with pytest.raises(ValueError, match="one entry per sample, batch 3"):
        DiffFlowObjective(reverse, prior, grid)(torch.zeros(3, 2, dtype=DT), condition=labels(2))
    with pytest.raises(ValueError, match="the network is called on a batch of 3"):
        Bound(reverse.score, labels(2))(torch.zeros(3, 2, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="no conditional network"):
        null_condition(FourierMLP(2, 8, 1), labels(2))
    with pytest.raises(ValueError, match="p_uncond must be"):
        PathMatching(LinearPath(), cond_net(), p_uncond=1.0)
    with pytest.raises(ValueError, match="condition has batch shape"):
        ProbabilityFlowDistribution(reverse, prior().expand((4,)), grid, condition=labels(3))
    with pytest.raises(ValueError, match="labels must be a tensor with one entry per sample"):
        TensorBatches(torch.zeros(10, 2), 4, labels=torch.zeros(9))
