"""The fast ELBO: equal to Pyro's on the same draws, and a valid bound.

Pyro's numbers come from its own objectives, ``TraceMeanField_ELBO`` and
``Trace_ELBO``, run on ``DMM.model``/``DMM.guide``. A ``poutine.trace``
around the guide records the very sample Pyro scored; the standard normal
draws behind it, ``eps_t = (z_t - loc_t) / scale_t`` (before any flow), are
handed to the fast ELBO, which then redraws the same ``z``. Everything runs in
float64, so agreement is checked far tighter than the 1e-4 the issue asks.
"""

from __future__ import annotations

import math
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from dmm_fixtures import SMALL, random_batch, small_dmm
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from dmm_helpers import lgssm
from dmm_helpers.data import Batch, make_batch, reverse_sequences
from dmm_helpers.dmm import DMM, GUIDES, LinearGaussianDMM
from dmm_helpers.elbo import elbo, elbo_terms, gaussian_kl

RTOL = 1e-9  # float64; the acceptance criterion is 1e-4
close = partial(torch.allclose, rtol=RTOL, atol=0.0)


def recorded_noise(guide_trace: poutine.Trace, num_steps: int) -> torch.Tensor:
    """The standard normal draws behind each guide sample: ``(batch, time, z_dim)``."""
    draws = []
    for t in range(num_steps):
        site = guide_trace.nodes[f"z_{t + 1}"]
        q_t, z_t = site["fn"].base_dist, site["value"]  # unmasked q(z_t | ...)
        if isinstance(q_t, dist.TransformedDistribution):
            for transform in reversed(
                q_t.transforms
            ):  # each step's own transforms: cached
                z_t = transform.inv(z_t)
            q_t = q_t.base_dist
        normal = q_t.base_dist  # Independent(Normal) -> Normal
        draws.append(((z_t - normal.loc) / normal.scale).detach())
    return torch.stack(draws, dim=1)


def pyro_elbo(
    dmm: DMM, batch: Batch, annealing_factor: float, objective: type
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pyro's differentiable ELBO and the noise of the guide sample it scored."""
    traced_guide = poutine.trace(dmm.guide)
    loss = objective(max_plate_nesting=1).differentiable_loss(
        dmm.model, traced_guide, batch, annealing_factor
    )
    return -loss, recorded_noise(traced_guide.trace, batch.x.shape[1])


def gradients(dmm: DMM, value: torch.Tensor) -> dict[str, torch.Tensor]:
    names, parameters = zip(*dmm.named_parameters())
    return dict(zip(names, torch.autograd.grad(value, parameters)))


def continuous_batch(x: torch.Tensor, lengths: torch.Tensor) -> Batch:
    """A Batch of real-valued sequences (``make_batch`` is for 88-key piano rolls)."""
    mask = (torch.arange(x.shape[1]) < lengths[:, None]).to(x.dtype)  # (batch, time)
    x = x * mask[..., None]
    return Batch(x, reverse_sequences(x, lengths), mask, lengths)


@pytest.fixture(autouse=True)
def _fresh_pyro() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


# ------------------------------------------------------------- closed form


def test_gaussian_kl_equals_torch_kl_divergence() -> None:
    torch.manual_seed(0)
    loc_q, loc_p = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    scale_q, scale_p = torch.rand(2, 4, 5, 6, dtype=torch.float64) + 0.1
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc_q, scale_q),
        torch.distributions.Normal(loc_p, scale_p),
    ).sum(-1)
    assert gaussian_kl(loc_q, scale_q, loc_p, scale_p).shape == (4, 5)
    assert torch.allclose(
        gaussian_kl(loc_q, scale_q, loc_p, scale_p), expected, rtol=1e-12
    )
    zero = gaussian_kl(loc_q, scale_q, loc_q, scale_q)
    assert torch.equal(zero, torch.zeros(4, 5, dtype=torch.float64))


# ------------------------------------------------------- equal to Pyro's


@pytest.mark.parametrize(
    "lengths", [[4, 4, 4], [4, 2, 3, 1]], ids=["no-padding", "padded"]
)
@pytest.mark.parametrize("annealing_factor", [1.0, 0.3])
@pytest.mark.parametrize(
    ("objective", "kl"),
    [(TraceMeanField_ELBO, "analytic"), (Trace_ELBO, "sampled")],
    ids=["TraceMeanField_ELBO", "Trace_ELBO"],
)
@pytest.mark.parametrize("guide", GUIDES)
def test_fast_elbo_equals_pyros_on_the_same_draws(
    lengths: list[int], annealing_factor: float, objective: type, kl: str, guide: str
) -> None:
    dmm = small_dmm(guide=guide)
    batch = random_batch(lengths)
    expected, noise = pyro_elbo(dmm, batch, annealing_factor, objective)
    value = elbo(dmm, batch, annealing_factor, kl_estimator=kl, noise=noise)
    assert close(value, expected), (value, expected)
    # The same gradients, so either trains the same model.
    fast_grads, pyro_grads = gradients(dmm, value), gradients(dmm, expected)
    for name, grad in fast_grads.items():
        assert torch.allclose(grad, pyro_grads[name], rtol=1e-7, atol=1e-10), name
    # The agreement is not vacuous: the other KL estimate, another annealing
    # factor or other draws all give numbers far outside the tolerance.
    other_kl = "sampled" if kl == "analytic" else "analytic"
    for changed in (
        elbo(dmm, batch, annealing_factor, kl_estimator=other_kl, noise=noise),
        elbo(dmm, batch, annealing_factor + 0.1, kl_estimator=kl, noise=noise),
        elbo(dmm, batch, annealing_factor, kl_estimator=kl, noise=noise + 0.1),
    ):
        assert not torch.allclose(changed, expected, rtol=1e-6, atol=0.0)


AUTHORS_CHOICES = {
    "scale": "variance",
    "z1_prior": "standard",
    "guide_start": "zero",
    "rnn_type": "lstm",
    "init": "uniform",
}


@pytest.mark.parametrize("guide", ["st-r", "mf-lr"])
@pytest.mark.parametrize(
    "options",
    [
        AUTHORS_CHOICES,
        {"scale": "variance"},
        {"z1_prior": "standard"},
        {"rnn_type": "lstm"},
        {"emitter": "nade"},
        {"augmented": True},
        {**AUTHORS_CHOICES, "augmented": True, "emitter": "nade"},
    ],
    ids=[
        "authors",
        "variance",
        "standard-prior",
        "lstm",
        "nade",
        "augmented",
        "authors-augmented-nade",
    ],
)
@pytest.mark.parametrize(
    ("objective", "kl"),
    [(TraceMeanField_ELBO, "analytic"), (Trace_ELBO, "sampled")],
    ids=["TraceMeanField_ELBO", "Trace_ELBO"],
)
def test_the_authors_choices_keep_the_fast_elbo_equal_to_pyros(
    guide: str, options: dict, objective: type, kl: str
) -> None:
    dmm = small_dmm(guide=guide, **options)
    batch = random_batch([4, 2, 3, 1])
    expected, noise = pyro_elbo(dmm, batch, 0.6, objective)
    value = elbo(dmm, batch, 0.6, kl_estimator=kl, noise=noise)
    assert close(value, expected), (value, expected)
    fast_grads, pyro_grads = gradients(dmm, value), gradients(dmm, expected)
    for name, grad in fast_grads.items():
        assert torch.allclose(grad, pyro_grads[name], rtol=1e-7, atol=1e-10), name


@pytest.mark.parametrize("guide", ["st-r", "mf-lr"])
@pytest.mark.parametrize("num_iafs", [1, 2])
@pytest.mark.parametrize("kl", ["analytic", "sampled"])
@pytest.mark.parametrize("iaf_context", [False, True])
def test_fast_elbo_with_flows_equals_pyros_sampled_kl(
    num_iafs: int, kl: str, guide: str, iaf_context: bool
) -> None:
    # With iaf_context each flow also reads h_t: Pyro's guide gives it h[:, t],
    # the fast loop the packed rows of the same step.
    dmm = small_dmm(num_iafs, guide=guide, iaf_context=iaf_context)
    batch = random_batch([4, 2, 3])
    # TraceMeanField_ELBO finds no closed-form KL for a flow and samples it,
    # so both of Pyro's objectives give the same number on the same draws.
    for objective in (TraceMeanField_ELBO, Trace_ELBO):
        expected, noise = pyro_elbo(dmm, batch, 0.5, objective)
        value = elbo(dmm, batch, 0.5, kl_estimator=kl, noise=noise)
        assert torch.isfinite(value)
        assert close(value, expected), (objective.__name__, value, expected)


def test_sample_equals_the_guides() -> None:
    dmm = small_dmm()
    batch = random_batch([4, 2, 3])
    guide_trace = poutine.trace(dmm.guide).get_trace(batch)
    terms = elbo_terms(dmm, batch, noise=recorded_noise(guide_trace, 4))
    for b, length in enumerate(batch.lengths.tolist()):
        for t in range(length):
            assert torch.allclose(
                terms.z[b, t], guide_trace.nodes[f"z_{t + 1}"]["value"][b]
            )
        assert torch.equal(terms.z[b, length:], torch.zeros_like(terms.z[b, length:]))


@pytest.mark.parametrize(
    ("num_iafs", "guide", "augmented"),
    [(0, "st-r", False), (2, "st-r", False), (0, "st-lr", False), (1, "mf-l", False)]
    + [(0, "st-r", True), (1, "mf-lr", True)],
)
def test_per_step_terms_equal_pyros_site_by_site(
    num_iafs: int, guide: str, augmented: bool
) -> None:
    # Pyro scores each step at its own sample sites x_t and z_t: the fast
    # ELBO's per-step terms must be those numbers, zero on padded steps. An
    # augmented model's step t reads x_{t-1}: a shift by one step in either
    # program would move every term.
    dmm = small_dmm(num_iafs=num_iafs, guide=guide, augmented=augmented)
    batch = random_batch([4, 2, 3])
    guide_trace = poutine.trace(dmm.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(dmm.model, trace=guide_trace)).get_trace(
        batch
    )
    terms = elbo_terms(dmm, batch, "sampled", noise=recorded_noise(guide_trace, 4))
    assert terms.step_log_lik.shape == terms.step_kl.shape == (3, 4)
    mask = batch.mask.bool()
    for t in range(4):
        x_site = model_trace.nodes[f"x_{t + 1}"]
        log_lik = x_site["fn"].base_dist.log_prob(x_site["value"])  # unmasked
        z_name = f"z_{t + 1}"
        z_t = guide_trace.nodes[z_name]["value"]
        log_q = guide_trace.nodes[z_name]["fn"].base_dist.log_prob(z_t)
        log_p = model_trace.nodes[z_name]["fn"].base_dist.log_prob(z_t)
        zero = torch.zeros_like(log_lik)
        expected_kl = torch.where(mask[:, t], log_q - log_p, zero)
        expected_lik = torch.where(mask[:, t], log_lik, zero)
        assert torch.allclose(terms.step_log_lik[:, t], expected_lik, rtol=1e-9)
        assert torch.allclose(terms.step_kl[:, t], expected_kl, rtol=1e-7, atol=1e-9)
    assert close(terms.step_log_lik.sum(1), terms.log_lik)
    assert close(terms.step_kl.sum(1), terms.kl)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("num_iafs", "guide", "options"),
    [(0, "st-r", {}), (1, "st-r", {}), *((0, g, {}) for g in GUIDES[1:])]
    + [(0, "st-r", {"augmented": True}), (1, "st-lr", {"augmented": True})],
)
@pytest.mark.parametrize("kl", ["analytic", "sampled"])
def test_padded_batch_equals_its_sequences_run_alone(
    num_iafs: int, kl: str, guide: str, options: dict
) -> None:
    # For an augmented model this also checks that each sequence's first
    # step reads x_0 = 0, not the step before it in the packed batch.
    dmm = small_dmm(num_iafs, guide=guide, **options)
    lengths = [5, 2, 4, 1]
    batch = random_batch(lengths)
    noise = torch.randn(4, 5, SMALL.z_dim, dtype=torch.float64)
    terms = elbo_terms(dmm, batch, kl_estimator=kl, noise=noise)
    total = torch.zeros((), dtype=torch.float64)
    for b, length in enumerate(lengths):
        alone = make_batch([batch.x[b, :length]])
        own = elbo_terms(dmm, alone, kl_estimator=kl, noise=noise[b : b + 1, :length])
        assert torch.allclose(terms.log_lik[b], own.log_lik[0], rtol=1e-12)
        assert torch.allclose(terms.kl[b], own.kl[0], rtol=1e-12)
        total = total + elbo(
            dmm, alone, 0.7, kl_estimator=kl, noise=noise[b : b + 1, :length]
        )
    assert torch.allclose(
        elbo(dmm, batch, 0.7, kl_estimator=kl, noise=noise), total, rtol=1e-12
    )


@pytest.mark.parametrize(
    "options",
    [{"guide": guide} for guide in GUIDES]
    + [{"emitter": "nade"}, {"augmented": True, "emitter": "nade"}],
    ids=[*GUIDES, "nade", "augmented-nade"],
)
def test_what_lies_in_the_padding_changes_nothing(options: dict) -> None:
    dmm = small_dmm(**options)
    batch = random_batch([5, 2, 4])
    noise = torch.randn(3, 5, SMALL.z_dim, dtype=torch.float64)
    padding = batch.mask == 0  # (batch, time)
    garbage_x = batch.x.masked_fill(padding[..., None], 1.0)
    garbage = batch._replace(
        x=garbage_x, x_reversed=reverse_sequences(garbage_x, batch.lengths)
    )
    garbage_noise = noise.masked_fill(padding[..., None], 1e3)
    assert torch.equal(
        elbo(dmm, batch, noise=noise), elbo(dmm, garbage, noise=garbage_noise)
    )


def test_annealing_scales_only_the_kl() -> None:
    dmm = small_dmm()
    batch = random_batch([4, 2, 3])
    noise = torch.randn(3, 4, SMALL.z_dim, dtype=torch.float64)
    terms = elbo_terms(dmm, batch, noise=noise)
    assert bool((terms.kl > 0).all())  # a closed-form KL is positive
    for beta in (0.0, 0.25, 1.0):
        expected = terms.log_lik.sum() - beta * terms.kl.sum()
        assert torch.allclose(elbo(dmm, batch, beta, noise=noise), expected, rtol=1e-12)


# ------------------------------------------------------------- statistics


def test_analytic_and_sampled_kl_agree_in_expectation() -> None:
    dmm = small_dmm()
    batch = random_batch([6])
    copies = 4000
    many = Batch(*(field.expand(copies, *field.shape[1:]) for field in batch))
    with torch.no_grad():
        noise = torch.randn(copies, 6, SMALL.z_dim, dtype=torch.float64)
        analytic = elbo_terms(dmm, many, kl_estimator="analytic", noise=noise).kl
        sampled = elbo_terms(dmm, many, kl_estimator="sampled", noise=noise).kl
    difference = sampled - analytic  # same draws: only the KL estimate differs
    standard_error = difference.std() / math.sqrt(copies)
    assert abs(float(difference.mean())) < 4 * float(standard_error)
    assert float(difference.std()) > 0.1  # the sampled KL really is noisy


def linear_gaussian_setting() -> tuple[LinearGaussianDMM, Batch, torch.Tensor]:
    """A 2-D latent, 3-D observed LGSSM as a DMM, three sequences, exact log p(x)."""
    torch.manual_seed(0)
    dtype = torch.float64
    dmm = LinearGaussianDMM(
        A=torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=dtype),
        C=torch.tensor([[1.0, 0.5], [0.0, 1.0], [0.3, -0.7]], dtype=dtype),
        q_scale=torch.tensor([0.5, 0.3], dtype=dtype),
        r_scale=torch.tensor([0.4, 0.6, 0.5], dtype=dtype),
        z_0=torch.tensor([1.0, -1.0], dtype=dtype),
        rnn_dim=16,
    )
    params = dmm.lgssm_params()
    draws = lgssm.sample(
        **params,
        num_steps=12,
        num_sequences=3,
        generator=torch.Generator().manual_seed(1),
    )
    batch = continuous_batch(draws.x, torch.tensor([12, 7, 9]))
    log_p = lgssm.log_likelihood(batch.x, **params, mask=batch.mask)  # (3,) Kalman
    return dmm, batch, log_p


def monte_carlo(
    dmm: DMM, batch: Batch, copies: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sequence: mean single-sample ELBO, its standard error, and log mean exp
    (IWAE).
    """
    many = Batch(*(field.repeat_interleave(copies, dim=0) for field in batch))
    with torch.no_grad():
        terms = elbo_terms(dmm, many, kl_estimator="sampled")
    weights = (terms.log_lik - terms.kl).view(-1, copies)  # log p(x, z) - log q(z | x)
    return (
        weights.mean(1),
        weights.std(1) / math.sqrt(copies),
        torch.logsumexp(weights, 1) - math.log(copies),
    )


def test_elbo_is_below_the_exact_log_likelihood_and_closes_in_as_the_guide_learns() -> (
    None
):
    dmm, batch, log_p = linear_gaussian_setting()
    mean_before, se_before, _ = monte_carlo(dmm, batch, copies=2000)
    assert bool((mean_before <= log_p + 3 * se_before).all())

    optimizer = torch.optim.Adam(dmm.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        (-elbo(dmm, batch)).backward()
        optimizer.step()

    mean_after, se_after, iwae = monte_carlo(dmm, batch, copies=2000)
    # Jensen: E_q[ELBO] <= log p(x), for the untrained and the fitted guide.
    assert bool((mean_after <= log_p + 3 * se_after).all()), (mean_after, log_p)
    # Fitting the guide shrinks the gap, to about a nat per sequence here.
    assert bool((log_p - mean_after < 0.25 * (log_p - mean_before)).all())
    assert bool((log_p - mean_after < 2.0).all())
    # Importance weighting the fitted guide's draws recovers log p(x) itself,
    # from below: the DMM's joint density really is the Kalman filter's model.
    assert bool((iwae <= log_p + 0.05).all()), (iwae, log_p)
    assert bool((iwae >= log_p - 0.25).all()), (iwae, log_p)


# -------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("num_iafs", "options"),
    [
        (0, {}),
        (1, {}),
        (2, {"iaf_context": True}),
        (0, {"augmented": True}),
        (0, {"augmented": True, "emitter": "nade"}),
    ],
)
def test_gradients_reach_every_parameter(num_iafs: int, options: dict) -> None:
    dmm = small_dmm(num_iafs, **options)
    batch = random_batch([4, 2, 3])
    for name, grad in gradients(dmm, elbo(dmm, batch)).items():
        assert bool(grad.isfinite().all()), name
        assert float(grad.abs().sum()) > 0, name


def test_fast_elbo_trains_with_a_torch_optimiser() -> None:
    dmm = small_dmm()
    batch = random_batch([6, 4, 5])
    noise = torch.randn(3, 6, SMALL.z_dim, dtype=torch.float64)
    before = float(elbo(dmm, batch, noise=noise).detach())
    optimizer = torch.optim.Adam(dmm.parameters(), lr=0.02)
    for _ in range(40):
        optimizer.zero_grad()
        loss = -elbo(dmm, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dmm.parameters(), 10.0)
        optimizer.step()
    assert float(elbo(dmm, batch, noise=noise).detach()) > before + 10  # nats


# ------------------------------------------------------ errors and dtypes


def test_bad_arguments_are_refused_with_a_clear_message() -> None:
    dmm = small_dmm()
    batch = random_batch([3, 2])
    narrow = Batch(
        batch.x[..., :12], batch.x_reversed[..., :12], batch.mask, batch.lengths
    )
    with pytest.raises(
        ValueError, match="batch has feature size 12 .* expects input_dim=88"
    ):
        elbo(dmm, narrow)
    with pytest.raises(
        ValueError, match='kl_estimator must be "analytic" or "sampled", got \'exact\''
    ):
        elbo(dmm, batch, kl_estimator="exact")  # type: ignore[arg-type]
    message = r"noise must have shape .* = \(2, 3, 3\); got \(2, 3, 4\)"
    with pytest.raises(ValueError, match=message):
        elbo(dmm, batch, noise=torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(
        ValueError, match="annealing_factor must be a finite number >= 0, got -0.5"
    ):
        elbo(dmm, batch, -0.5)
    with pytest.raises(TypeError, match="annealing_factor must be a number, got True"):
        elbo(dmm, batch, True)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_elbo_follows_the_models_dtype(dtype: torch.dtype) -> None:
    dmm = small_dmm().to(dtype)
    batch = make_batch([roll.to(dtype) for roll in random_batch([3, 2]).x])
    terms = elbo_terms(dmm, batch)
    assert terms.log_lik.dtype == terms.kl.dtype == terms.z.dtype == dtype
    assert terms.log_lik.shape == terms.kl.shape == (2,) and terms.z.shape == (
        2,
        3,
        SMALL.z_dim,
    )
