"""Tests of :mod:`dmm_helpers.lgssm` against independent computations.

The references are (1) the dense joint Gaussian of ``(z_{1:T}, x_{1:T})``,
built by stacking all time steps into one big vector and conditioning or
marginalising with plain linear algebra, (2) Pyro's ``GaussianHMM``, which
computes the same likelihood by a parallel-scan algorithm, and (3) moments
estimated from many samples. Random systems are stable (spectral radius of
``A`` below one) and drawn by hypothesis.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmm_helpers import lgssm

DTYPE = torch.float64
# Exact algorithms in float64: relative agreement with the dense reference; the
# absolute floor only matters for values that happen to be near zero.
LOGLIK_RTOL, LOGLIK_ATOL = 1e-8, 1e-9
MOMENT_RTOL, MOMENT_ATOL = 1e-8, 1e-10
# Monte Carlo checks: allowed deviation in standard errors.
NUM_STANDARD_ERRORS = 5.0
# float32 against float64: what single precision can promise on short sequences.
FLOAT32_RTOL = 1e-4

HYPOTHESIS = settings(max_examples=40, deadline=None)


def close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float
) -> bool:
    return torch.allclose(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------
# Random systems and the dense reference
# ----------------------------------------------------------------------------


def random_covariance(n: int, generator: torch.Generator) -> torch.Tensor:
    """A well-conditioned SPD matrix: L L^T / n + 0.1 I."""
    L = torch.randn(n, n, generator=generator, dtype=DTYPE)
    return L @ L.T / n + 0.1 * torch.eye(n, dtype=DTYPE)


def random_system(z_dim: int, obs_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Random stable parameters: A rescaled to a spectral radius in [0.1, 0.95)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(z_dim, z_dim, generator=g, dtype=DTYPE)
    radius = 0.1 + 0.85 * torch.rand((), generator=g, dtype=DTYPE)
    A = A * radius / torch.linalg.eigvals(A).abs().max()
    return {
        "A": A,
        "C": torch.randn(obs_dim, z_dim, generator=g, dtype=DTYPE),
        "Q": random_covariance(z_dim, g),
        "R": random_covariance(obs_dim, g),
        "mu0": torch.randn(z_dim, generator=g, dtype=DTYPE),
        "P0": random_covariance(z_dim, g),
    }


def random_mask(batch: int, num_steps: int, seed: int) -> torch.Tensor:
    """Observe each step with probability 0.6, in no particular pattern."""
    g = torch.Generator().manual_seed(seed + 1)
    return (torch.rand(batch, num_steps, generator=g) < 0.6).to(DTYPE)


def dense_joint(params: dict[str, torch.Tensor], num_steps: int):
    """Means and covariances of the stacked ``z = (z_1..z_T)`` and ``x = (x_1..x_T)``.

    ``z = M e`` with noise ``e = (z_1, w_2, .., w_T) ~ N((mu0, 0..), diag(P0, Q..))``
    and ``M[s, t] = A^(s - t)`` for ``s >= t``; ``x = (I kron C) z + v``.
    Returns ``mean_z (T z,), cov_z (T z, T z), mean_x (T o,), cov_x (T o, T o)``
    and ``cov_zx (T z, T o)``, all time-major.
    """
    A, C, Q, R = params["A"], params["C"], params["Q"], params["R"]
    z_dim = A.shape[0]
    powers = [torch.eye(z_dim, dtype=DTYPE)]
    for _ in range(num_steps - 1):
        powers.append(A @ powers[-1])
    M = torch.zeros(num_steps * z_dim, num_steps * z_dim, dtype=DTYPE)
    for s in range(num_steps):
        for t in range(s + 1):
            M[s * z_dim : (s + 1) * z_dim, t * z_dim : (t + 1) * z_dim] = powers[s - t]
    noise_mean = torch.cat(
        [params["mu0"], torch.zeros((num_steps - 1) * z_dim, dtype=DTYPE)]
    )
    noise_cov = torch.block_diag(params["P0"], *[Q] * (num_steps - 1))
    mean_z = M @ noise_mean
    cov_z = M @ noise_cov @ M.T
    C_big = torch.block_diag(*[C] * num_steps)
    mean_x = C_big @ mean_z
    cov_x = C_big @ cov_z @ C_big.T + torch.block_diag(*[R] * num_steps)
    return mean_z, cov_z, mean_x, cov_x, cov_z @ C_big.T


def observed_indices(mask_row: torch.Tensor, obs_dim: int) -> torch.Tensor:
    """Positions in the stacked x of the entries of observed steps."""
    steps = mask_row.nonzero().flatten()
    return (steps[:, None] * obs_dim + torch.arange(obs_dim)).flatten()


def dense_log_likelihood(x, params, mask) -> torch.Tensor:
    """log N(x_obs; mean_obs, cov_obs) of each sequence, marginalising missing steps."""
    batch, num_steps, obs_dim = x.shape
    _, _, mean_x, cov_x, _ = dense_joint(params, num_steps)
    out = []
    for b in range(batch):
        idx = observed_indices(mask[b], obs_dim)
        if len(idx) == 0:
            out.append(torch.zeros((), dtype=DTYPE))
            continue
        normal = torch.distributions.MultivariateNormal(mean_x[idx], cov_x[idx][:, idx])
        out.append(normal.log_prob(x[b].flatten()[idx]))
    return torch.stack(out)


def dense_posterior(x, params, mask):
    """Means ``(B, T, z)`` and covariances ``(B, T, z, z)`` of ``z_t | x_obs``."""
    batch, num_steps, obs_dim = x.shape
    z_dim = params["A"].shape[0]
    mean_z, cov_z, mean_x, cov_x, cov_zx = dense_joint(params, num_steps)
    means, covs = [], []
    for b in range(batch):
        idx = observed_indices(mask[b], obs_dim)
        gain = torch.linalg.solve(
            cov_x[idx][:, idx], cov_zx[:, idx].T
        ).T  # (T z, n_obs)
        mean = mean_z + gain @ (x[b].flatten()[idx] - mean_x[idx])
        cov = cov_z - gain @ cov_zx[:, idx].T
        blocks = cov.reshape(num_steps, z_dim, num_steps, z_dim).diagonal(
            dim1=0, dim2=2
        )
        means.append(mean.reshape(num_steps, z_dim))
        covs.append(blocks.permute(2, 0, 1))
    return torch.stack(means), torch.stack(covs)


@st.composite
def problems(draw, masked: bool):
    """A random stable system, data sampled from it, and a mask (all ones if not
    masked).
    """
    z_dim = draw(st.integers(1, 4))
    obs_dim = draw(st.integers(1, 4))
    num_steps = draw(st.integers(1, 30))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    params = random_system(z_dim, obs_dim, seed)
    x = lgssm.sample(
        **params,
        num_steps=num_steps,
        num_sequences=batch,
        generator=torch.Generator().manual_seed(seed),
    ).x
    if masked:
        mask = random_mask(batch, num_steps, seed)
    else:
        mask = torch.ones(batch, num_steps, dtype=DTYPE)
    return params, x, mask


# ----------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------


def test_dense_reference_agrees_with_a_hand_computed_scalar_case():
    """T = 2, scalar, by hand.

    Var x_1 = P0 + R, Cov(x_1, x_2) = a P0, Var x_2 = a^2 P0 + Q + R.
    """
    a, p0, q, r = 0.5, 2.0, 0.3, 0.7
    params = {
        "A": torch.tensor([[a]], dtype=DTYPE),
        "C": torch.tensor([[1.0]], dtype=DTYPE),
        "Q": torch.tensor([[q]], dtype=DTYPE),
        "R": torch.tensor([[r]], dtype=DTYPE),
        "mu0": torch.tensor([1.0], dtype=DTYPE),
        "P0": torch.tensor([[p0]], dtype=DTYPE),
    }
    _, _, mean_x, cov_x, _ = dense_joint(params, 2)
    expected = torch.tensor(
        [[p0 + r, a * p0], [a * p0, a * a * p0 + q + r]], dtype=DTYPE
    )
    assert torch.allclose(cov_x, expected)
    assert torch.allclose(mean_x, torch.tensor([1.0, a], dtype=DTYPE))


# ----------------------------------------------------------------------------
# (a) log-likelihood = dense joint Gaussian, with and without masks
# ----------------------------------------------------------------------------


@HYPOTHESIS
@given(problem=problems(masked=False))
def test_log_likelihood_equals_dense_joint_gaussian(problem):
    params, x, mask = problem
    ll = lgssm.log_likelihood(x, **params)
    assert ll.shape == (x.shape[0],) and ll.dtype == DTYPE
    assert close(ll, dense_log_likelihood(x, params, mask), LOGLIK_RTOL, LOGLIK_ATOL)


@HYPOTHESIS
@given(problem=problems(masked=True))
def test_masked_log_likelihood_marginalises_missing_steps(problem):
    params, x, mask = problem
    ll = lgssm.log_likelihood(x, **params, mask=mask)
    assert close(ll, dense_log_likelihood(x, params, mask), LOGLIK_RTOL, LOGLIK_ATOL)


def test_trailing_padding_equals_truncation():
    """Padding at the end (the DMM's use of masks) is the same as a shorter sequence."""
    params = random_system(2, 3, seed=7)
    x = lgssm.sample(
        **params,
        num_steps=12,
        num_sequences=1,
        generator=torch.Generator().manual_seed(7),
    ).x
    mask = torch.ones(1, 12, dtype=DTYPE)
    mask[:, 8:] = 0
    padded = lgssm.log_likelihood(x, **params, mask=mask)
    truncated = lgssm.log_likelihood(x[:, :8], **params)
    assert close(padded, truncated, LOGLIK_RTOL, LOGLIK_ATOL)
    assert torch.equal(lgssm.log_likelihood(x, **params, mask=mask.bool()), padded)


def test_values_at_missing_steps_are_never_read():
    """NaN placeholders at masked steps change neither results nor gradients."""
    params = random_system(2, 2, seed=3)
    x = lgssm.sample(
        **params,
        num_steps=10,
        num_sequences=2,
        generator=torch.Generator().manual_seed(3),
    ).x
    mask = random_mask(2, 10, seed=3)
    A = params["A"].clone().requires_grad_()
    others = {k: v for k, v in params.items() if k != "A"}
    with_zeros = lgssm.log_likelihood(x * mask[..., None], A, **others, mask=mask)
    x_nan = x.masked_fill(mask[..., None] == 0, math.nan)
    with_nans = lgssm.log_likelihood(x_nan, A, **others, mask=mask)
    assert torch.equal(with_zeros, with_nans)
    (grad,) = torch.autograd.grad(with_nans.sum(), A)
    assert torch.isfinite(grad).all()


def test_fully_missing_sequence_has_zero_log_likelihood_and_prior_posterior():
    params = random_system(3, 2, seed=11)
    x = torch.full((1, 6, 2), math.nan, dtype=DTYPE)
    mask = torch.zeros(1, 6, dtype=DTYPE)
    smoothed = lgssm.rts_smoother(x, **params, mask=mask)
    assert torch.equal(smoothed.log_likelihood, torch.zeros(1, dtype=DTYPE))
    mean_z, cov_z, *_ = dense_joint(params, 6)
    prior_covs = cov_z.reshape(6, 3, 6, 3).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    assert close(
        smoothed.smoothed_means[0], mean_z.reshape(6, 3), MOMENT_RTOL, MOMENT_ATOL
    )
    assert close(smoothed.smoothed_covariances[0], prior_covs, MOMENT_RTOL, MOMENT_ATOL)


# ----------------------------------------------------------------------------
# (b) log-likelihood = Pyro's GaussianHMM
# ----------------------------------------------------------------------------


@HYPOTHESIS
@given(problem=problems(masked=False))
def test_log_likelihood_equals_pyro_gaussian_hmm(problem):
    params, x, mask = problem
    hmm = lgssm.to_pyro_gaussian_hmm(**params, num_steps=x.shape[1])
    assert hmm.event_shape == x.shape[1:]
    pyro_ll = hmm.log_prob(x)
    assert close(lgssm.log_likelihood(x, **params), pyro_ll, LOGLIK_RTOL, LOGLIK_ATOL)
    # The mapping is an independent route to the dense answer too.
    assert close(
        pyro_ll, dense_log_likelihood(x, params, mask), LOGLIK_RTOL, LOGLIK_ATOL
    )


# ----------------------------------------------------------------------------
# (c, d) filter and smoother = dense Gaussian conditioning
# ----------------------------------------------------------------------------


@HYPOTHESIS
@given(problem=problems(masked=True))
def test_smoother_equals_dense_conditioning(problem):
    params, x, mask = problem
    smoothed = lgssm.rts_smoother(x, **params, mask=mask)
    means, covs = dense_posterior(x, params, mask)
    assert smoothed.smoothed_means.shape == means.shape
    assert smoothed.smoothed_covariances.shape == covs.shape
    assert close(smoothed.smoothed_means, means, MOMENT_RTOL, MOMENT_ATOL)
    assert close(smoothed.smoothed_covariances, covs, MOMENT_RTOL, MOMENT_ATOL)


@HYPOTHESIS
@given(problem=problems(masked=True))
def test_filter_equals_dense_conditioning_on_the_past(problem):
    """p(z_t | x_{1:t}) and p(z_t | x_{1:t-1}) by conditioning on the prefix (mask the
    rest).
    """
    params, x, mask = problem
    filtered = lgssm.kalman_filter(x, **params, mask=mask)
    num_steps = x.shape[1]
    for t in range(num_steps):
        upto = mask.clone()
        upto[:, t + 1 :] = 0
        means, covs = dense_posterior(x, params, upto)
        assert close(
            filtered.filtered_means[:, t], means[:, t], MOMENT_RTOL, MOMENT_ATOL
        )
        assert close(
            filtered.filtered_covariances[:, t], covs[:, t], MOMENT_RTOL, MOMENT_ATOL
        )
        upto[:, t] = 0
        means, covs = dense_posterior(x, params, upto)
        assert close(
            filtered.predicted_means[:, t], means[:, t], MOMENT_RTOL, MOMENT_ATOL
        )
        assert close(
            filtered.predicted_covariances[:, t], covs[:, t], MOMENT_RTOL, MOMENT_ATOL
        )


@HYPOTHESIS
@given(problem=problems(masked=True))
def test_filter_and_smoother_agree_at_the_last_step(problem):
    params, x, mask = problem
    filtered = lgssm.kalman_filter(x, **params, mask=mask)
    smoothed = lgssm.rts_smoother(x, **params, mask=mask)
    assert torch.equal(filtered.filtered_means[:, -1], smoothed.smoothed_means[:, -1])
    assert torch.equal(
        filtered.filtered_covariances[:, -1], smoothed.smoothed_covariances[:, -1]
    )
    assert torch.equal(filtered.log_likelihood, smoothed.log_likelihood)


def test_covariances_stay_positive_definite_when_nearly_deterministic():
    """Tiny noise makes the naive update lose positivity; Joseph forms keep it."""
    z_dim, obs_dim = 4, 4
    params = random_system(z_dim, obs_dim, seed=5)
    params["A"] = (
        0.999 * torch.linalg.qr(params["A"])[0]
    )  # slow rotation, no forgetting
    params["Q"] = 1e-9 * torch.eye(z_dim, dtype=DTYPE)
    params["R"] = 1e-9 * torch.eye(obs_dim, dtype=DTYPE)
    params["P0"] = 1e3 * torch.eye(z_dim, dtype=DTYPE)
    x = lgssm.sample(
        **params,
        num_steps=200,
        num_sequences=2,
        generator=torch.Generator().manual_seed(5),
    ).x
    filtered = lgssm.kalman_filter(x, **params)
    smoothed = lgssm.rts_smoother(x, **params)
    for covs in (
        filtered.filtered_covariances,
        filtered.predicted_covariances,
        smoothed.smoothed_covariances,
    ):
        assert torch.equal(covs, covs.mT)
        assert (torch.linalg.eigvalsh(covs) > 0).all()
    assert torch.isfinite(smoothed.log_likelihood).all()


# ----------------------------------------------------------------------------
# Gradients and dtypes
# ----------------------------------------------------------------------------


def test_log_likelihood_gradients_match_finite_differences():
    params = random_system(2, 2, seed=13)
    x = lgssm.sample(
        **params,
        num_steps=5,
        num_sequences=2,
        generator=torch.Generator().manual_seed(13),
    ).x
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=DTYPE)
    chol = {name: torch.linalg.cholesky(params[name]) for name in ("Q", "R", "P0")}

    def f(A, C, L_Q, L_R, mu0, L_P0):
        # Covariances as L L^T so that finite-difference moves stay symmetric.
        return lgssm.log_likelihood(
            x, A, C, L_Q @ L_Q.T, L_R @ L_R.T, mu0, L_P0 @ L_P0.T, mask
        )

    inputs = tuple(
        t.clone().requires_grad_()
        for t in (
            params["A"],
            params["C"],
            chol["Q"],
            chol["R"],
            params["mu0"],
            chol["P0"],
        )
    )
    assert torch.autograd.gradcheck(f, inputs)


def test_float32_follows_the_input_dtype():
    params = random_system(3, 2, seed=17)
    x = lgssm.sample(
        **params,
        num_steps=20,
        num_sequences=2,
        generator=torch.Generator().manual_seed(17),
    ).x
    params32 = {k: v.float() for k, v in params.items()}
    filtered = lgssm.kalman_filter(x.float(), **params32)
    assert all(t.dtype == torch.float32 for t in filtered)
    assert close(
        filtered.log_likelihood.double(),
        lgssm.log_likelihood(x, **params),
        FLOAT32_RTOL,
        0.0,
    )
    assert lgssm.sample(**params32, num_steps=3).x.dtype == torch.float32


# ----------------------------------------------------------------------------
# (f) sampling
# ----------------------------------------------------------------------------


def test_sample_moments_match_the_analytic_joint():
    """Every mean and covariance of the stacked (z_{1:T}, x_{1:T}) within its standard
    error.

    For jointly Gaussian u, v, the sample covariance of N draws has variance
    (s_uu s_vv + s_uv^2) / N and the sample mean has variance s_uu / N.
    """
    num_steps, num_sequences = 6, 20_000
    params = random_system(2, 3, seed=19)
    # A far from symmetric, so that a transposed transition cannot pass unnoticed.
    params["A"] = torch.tensor([[0.8, 0.6], [-0.3, 0.5]], dtype=DTYPE)
    draws = lgssm.sample(
        **params,
        num_steps=num_steps,
        num_sequences=num_sequences,
        generator=torch.Generator().manual_seed(19),
    )
    stacked = torch.cat(
        [draws.z.flatten(1), draws.x.flatten(1)], dim=1
    )  # (N, T (z + o))
    mean_z, cov_z, mean_x, cov_x, cov_zx = dense_joint(params, num_steps)
    mean = torch.cat([mean_z, mean_x])
    cov = torch.cat([torch.cat([cov_z, cov_zx], 1), torch.cat([cov_zx.T, cov_x], 1)], 0)

    mean_se = (cov.diagonal() / num_sequences).sqrt()
    assert ((stacked.mean(0) - mean).abs() <= NUM_STANDARD_ERRORS * mean_se).all()
    variances = cov.diagonal()
    cov_se = ((variances[:, None] * variances[None, :] + cov**2) / num_sequences).sqrt()
    assert ((stacked.T.cov() - cov).abs() <= NUM_STANDARD_ERRORS * cov_se).all()


def test_sample_shapes_and_reproducibility():
    params = random_system(3, 2, seed=23)
    first = lgssm.sample(
        **params,
        num_steps=7,
        num_sequences=4,
        generator=torch.Generator().manual_seed(0),
    )
    again = lgssm.sample(
        **params,
        num_steps=7,
        num_sequences=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert first.z.shape == (4, 7, 3) and first.x.shape == (4, 7, 2)
    assert torch.equal(first.z, again.z) and torch.equal(first.x, again.x)


# ----------------------------------------------------------------------------
# (e) bad input
# ----------------------------------------------------------------------------

GOOD = random_system(2, 3, seed=29)
X = torch.zeros(4, 5, 3, dtype=DTYPE)


def with_param(name: str, value) -> dict:
    return {**GOOD, name: value}


BAD_PARAMETERS = [
    (
        with_param("A", torch.zeros(2, 3, dtype=DTYPE)),
        ValueError,
        r"A must have shape \(z_dim, z_dim\), got \(2, 3\)",
    ),
    (
        with_param("C", torch.zeros(3, 4, dtype=DTYPE)),
        ValueError,
        r"C must have shape \(obs_dim, z_dim\) with z_dim=2 \(from A\), got \(3, 4\)",
    ),
    (
        with_param("Q", torch.eye(3, dtype=DTYPE)),
        ValueError,
        r"Q must have shape \(2, 2\) .* got \(3, 3\)",
    ),
    (
        with_param("R", torch.eye(2, dtype=DTYPE)),
        ValueError,
        r"R must have shape \(3, 3\) .* got \(2, 2\)",
    ),
    (
        with_param("mu0", torch.zeros(2, 1, dtype=DTYPE)),
        ValueError,
        r"mu0 must have shape \(2,\) .* got \(2, 1\)",
    ),
    (
        with_param("P0", torch.eye(3, dtype=DTYPE)),
        ValueError,
        r"P0 must have shape \(2, 2\) .* got \(3, 3\)",
    ),
    (
        with_param("Q", -torch.eye(2, dtype=DTYPE)),
        ValueError,
        "Q must be positive definite",
    ),
    (
        with_param(
            "R", torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]], dtype=DTYPE)
        ),
        ValueError,
        "R must be a symmetric covariance matrix",
    ),
    (
        with_param("A", [[1.0, 0.0], [0.0, 1.0]]),
        TypeError,
        "A must be a torch.Tensor, got list",
    ),
    (
        with_param("C", torch.zeros(3, 2, dtype=torch.int64)),
        TypeError,
        "C must have a floating-point dtype",
    ),
    (
        with_param("mu0", torch.zeros(2, dtype=torch.float32)),
        TypeError,
        "mu0 has dtype torch.float32 .* but A has dtype torch.float64",
    ),
]


@pytest.mark.parametrize("params, error, message", BAD_PARAMETERS)
def test_bad_parameters_are_named(params, error, message):
    with pytest.raises(error, match=message):
        lgssm.kalman_filter(X, **params)
    with pytest.raises(error, match=message):
        lgssm.sample(**params, num_steps=3)
    with pytest.raises(error, match=message):
        lgssm.to_pyro_gaussian_hmm(**params, num_steps=3)


BAD_DATA = [
    (
        torch.zeros(5, 3, dtype=DTYPE),
        None,
        ValueError,
        r"x must have shape \(batch, time, obs_dim\) with obs_dim=3 \(from C\), "
        r"got \(5, 3\)",
    ),
    (
        torch.zeros(4, 5, 2, dtype=DTYPE),
        None,
        ValueError,
        r"x must have shape \(batch, time, obs_dim\) with obs_dim=3 \(from C\), "
        r"got \(4, 5, 2\)",
    ),
    (
        torch.zeros(4, 0, 3, dtype=DTYPE),
        None,
        ValueError,
        "x must have at least one time step",
    ),
    (
        X.float(),
        None,
        TypeError,
        "x has dtype torch.float32 .* parameters have dtype torch.float64",
    ),
    (X.tolist(), None, TypeError, "x must be a torch.Tensor, got list"),
    (
        X,
        torch.ones(4, 6),
        ValueError,
        r"mask must have shape \(batch, time\) = \(4, 5\) "
        r"\(from x\), got \(4, 6\)",
    ),
    (X, torch.full((4, 5), 0.5), ValueError, "mask must contain only 0 and 1, got 0.5"),
    (X, [[1] * 5] * 4, TypeError, "mask must be a torch.Tensor, got list"),
    (
        X.index_put(
            (torch.tensor(2), torch.tensor(3)), torch.tensor(math.nan, dtype=DTYPE)
        ),
        None,
        ValueError,
        r"x has a NaN or infinite value at an observed step \(sequence 2, step 3\)",
    ),
]


@pytest.mark.parametrize("x, mask, error, message", BAD_DATA)
def test_bad_data_is_named(x, mask, error, message):
    for algorithm in (lgssm.kalman_filter, lgssm.log_likelihood, lgssm.rts_smoother):
        with pytest.raises(error, match=message):
            algorithm(x, **GOOD, mask=mask)


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_steps", 0),
        ("num_steps", 2.0),
        ("num_sequences", -1),
        ("num_sequences", True),
    ],
)
def test_bad_counts_are_named(name, value):
    kwargs = {"num_steps": 3, "num_sequences": 2, name: value}
    with pytest.raises(
        ValueError, match=f"{name} must be a positive int, got {value!r}"
    ):
        lgssm.sample(**GOOD, **kwargs)
