"""Linear Gaussian state space models: sampling, Kalman filter, RTS smoother.

The model (chapter 01, ``notebooks/01_gaussian_state_space_models.ipynb``)::

    z_1 ~ N(mu0, P0)
    z_t = A z_{t-1} + w_t,   w_t ~ N(0, Q)      t = 2..T
    x_t = C z_t + v_t,       v_t ~ N(0, R)      t = 1..T

with ``z_t`` of size ``z_dim`` and ``x_t`` of size ``obs_dim``. Every
algorithm is a pure function of the data and the parameters ``A (z_dim,
z_dim)``, ``C (obs_dim, z_dim)``, ``Q (z_dim, z_dim)``, ``R (obs_dim,
obs_dim)``, ``mu0 (z_dim,)``, ``P0 (z_dim, z_dim)`` and returns a named tuple,
in the style of dynamax. Data come in batches ``x (batch, time, obs_dim)``
with an optional ``mask (batch, time)``: a step whose mask is 0 is a missing
observation (any pattern, not only trailing padding); the filter predicts
through it without an update.

Numerics: covariances are factorised with Cholesky and every "inverse" is a
triangular or Cholesky solve; the filter uses the Joseph form of the
covariance update and the smoother its analogue, so both stay symmetric
positive semi-definite in finite precision. The dtype and device follow the
parameters; use float64 when comparing with dense computations.
"""

import math
from typing import NamedTuple

import pyro.distributions as dist
import torch

__all__ = [
    "Sample",
    "FilteredPosterior",
    "SmoothedPosterior",
    "sample",
    "kalman_filter",
    "log_likelihood",
    "rts_smoother",
    "to_pyro_gaussian_hmm",
]


def _symmetrize(M: torch.Tensor) -> torch.Tensor:
    """(M + M^T) / 2 over the last two dimensions: removes round-off asymmetry."""
    return 0.5 * (M + M.mT)


def _check_model(
    A: torch.Tensor,
    C: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    mu0: torch.Tensor,
    P0: torch.Tensor,
) -> tuple[int, int]:
    """Validate the parameters of the model and return ``(z_dim, obs_dim)``.

    Raises TypeError for non-tensors or mixed dtypes/devices and ValueError for
    wrong shapes or covariances that are not symmetric positive definite.
    """
    params = {"A": A, "C": C, "Q": Q, "R": R, "mu0": mu0, "P0": P0}
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(value).__name__}"
            )
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must have a floating-point dtype, got {value.dtype}"
            )
        if value.dtype != A.dtype or value.device != A.device:
            raise TypeError(
                f"{name} has dtype {value.dtype} on {value.device} but A has dtype "
                f"{A.dtype} on {A.device}; all parameters must share dtype and device"
            )
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must have shape (z_dim, z_dim), got {tuple(A.shape)}")
    z_dim = A.shape[0]
    if C.dim() != 2 or C.shape[1] != z_dim:
        raise ValueError(
            f"C must have shape (obs_dim, z_dim) with z_dim={z_dim} (from A), "
            f"got {tuple(C.shape)}"
        )
    obs_dim = C.shape[0]
    expected = {
        "Q": (z_dim, z_dim),
        "R": (obs_dim, obs_dim),
        "mu0": (z_dim,),
        "P0": (z_dim, z_dim),
    }
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (z_dim={z_dim}, obs_dim={obs_dim}), "
                f"got {tuple(params[name].shape)}"
            )
    for name in ("Q", "R", "P0"):
        M = params[name].detach()
        scale = M.abs().max().clamp_min(torch.finfo(M.dtype).tiny)
        if not torch.allclose(
            M, M.mT, rtol=0.0, atol=1e3 * torch.finfo(M.dtype).eps * scale
        ):
            raise ValueError(f"{name} must be a symmetric covariance matrix, got\n{M}")
        if torch.linalg.cholesky_ex(M).info.item() != 0:
            raise ValueError(
                f"{name} must be positive definite (its Cholesky factorisation failed)"
            )
    return z_dim, obs_dim


def _check_observations(
    x: torch.Tensor, mask: torch.Tensor | None, obs_dim: int, A: torch.Tensor
) -> torch.Tensor:
    """Check ``x`` ``(B, T, obs_dim)`` and ``mask``; the mask as bool ``(B, T)``.

    Values of ``x`` at masked steps are never read, so they may be NaN.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != A.dtype or x.device != A.device:
        raise TypeError(
            f"x has dtype {x.dtype} on {x.device} but the parameters have dtype "
            f"{A.dtype} on {A.device}"
        )
    if x.dim() != 3 or x.shape[2] != obs_dim:
        raise ValueError(
            "x must have shape (batch, time, obs_dim) with "
            f"obs_dim={obs_dim} (from C), "
            f"got {tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"x must have at least one time step, got shape {tuple(x.shape)}"
        )
    if mask is None:
        observed = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    else:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.shape != x.shape[:2]:
            raise ValueError(
                f"mask must have shape (batch, time) = {tuple(x.shape[:2])} (from x), "
                f"got {tuple(mask.shape)}"
            )
        if mask.device != x.device:
            raise TypeError(f"mask is on {mask.device} but x is on {x.device}")
        if not ((mask == 0) | (mask == 1)).all():
            bad = mask[(mask != 0) & (mask != 1)][0].item()
            raise ValueError(f"mask must contain only 0 and 1, got {bad}")
        observed = mask.bool()
    not_finite = observed & ~torch.isfinite(x).all(-1)
    if not_finite.any():
        b, t = (int(i) for i in not_finite.nonzero()[0])
        raise ValueError(
            "x has a NaN or infinite value at an observed step "
            f"(sequence {b}, step {t}); "
            "mark missing observations with mask=0 instead"
        )
    return observed


def _check_count(name: str, value: int) -> None:
    """Require a positive Python int (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class Sample(NamedTuple):
    """Draws from the model: ``z (batch, time, z_dim)`` and ``x (batch, time, obs)``."""

    z: torch.Tensor
    x: torch.Tensor


def sample(
    A: torch.Tensor,
    C: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    mu0: torch.Tensor,
    P0: torch.Tensor,
    num_steps: int,
    num_sequences: int = 1,
    generator: torch.Generator | None = None,
) -> Sample:
    """Draw ``num_sequences`` independent sequences of length ``num_steps``.

    Ancestral sampling: ``z_1 = mu0 + L_P0 e_1``, ``z_t = A z_{t-1} + L_Q e_t``,
    ``x_t = C z_t + L_R u_t`` with standard normal ``e_t, u_t`` and Cholesky
    factors ``L L^T`` of P0, Q and R. Returns ``Sample(z, x)`` with shapes
    ``(num_sequences, num_steps, z_dim)`` and ``(num_sequences, num_steps, obs_dim)``
    in the parameters' dtype and device; ``generator`` makes draws reproducible.
    """
    z_dim, obs_dim = _check_model(A, C, Q, R, mu0, P0)
    _check_count("num_steps", num_steps)
    _check_count("num_sequences", num_sequences)

    def standard_normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=A.dtype, device=A.device)

    z_t = (
        mu0 + standard_normal(num_sequences, z_dim) @ torch.linalg.cholesky(P0).mT
    )  # (B, z_dim)
    L_Q = torch.linalg.cholesky(Q)
    zs = [z_t]
    for _ in range(num_steps - 1):
        # Row-vector form of z_t = A z_{t-1} + w_t for the whole batch at once.
        z_t = z_t @ A.mT + standard_normal(num_sequences, z_dim) @ L_Q.mT
        zs.append(z_t)
    z = torch.stack(zs, dim=1)  # (B, T, z_dim)
    noise = (
        standard_normal(num_sequences, num_steps, obs_dim) @ torch.linalg.cholesky(R).mT
    )
    x = z @ C.mT + noise  # (B, T, obs_dim)
    return Sample(z, x)


class FilteredPosterior(NamedTuple):
    """Output of :func:`kalman_filter`.

    - ``filtered_means (B, T, z_dim)``, ``filtered_covariances (B, T, z_dim, z_dim)``:
      mean and covariance of ``p(z_t | x_{1:t})``.
    - ``predicted_means``, ``predicted_covariances`` (same shapes): of
      ``p(z_t | x_{1:t-1})``; at ``t = 1`` these are ``mu0`` and ``P0``.
    - ``log_likelihood (B,)``: ``log p(x_{1:T})`` of each sequence, counting
      only observed steps.
    """

    filtered_means: torch.Tensor
    filtered_covariances: torch.Tensor
    predicted_means: torch.Tensor
    predicted_covariances: torch.Tensor
    log_likelihood: torch.Tensor


def kalman_filter(
    x: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    mu0: torch.Tensor,
    P0: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> FilteredPosterior:
    """Kalman filter for a batch ``x (B, T, obs_dim)``; ``mask (B, T)`` marks observed.

    With ``p(z_t | x_{1:t-1}) = N(mu_{t|t-1}, P_{t|t-1})``, starting from
    ``mu_{1|0} = mu0`` and ``P_{1|0} = P0``:

    - innovation ``r_t = x_t - C mu_{t|t-1}``, covariance ``S_t = C P_{t|t-1} C^T + R``;
      ``log p(x_t | x_{1:t-1}) = log N(r_t; 0, S_t)``, and the sum over observed
      steps is the exact ``log p(x_{1:T})``;
    - update with the gain ``K_t = P_{t|t-1} C^T S_t^{-1}`` (a Cholesky solve):
      ``mu_{t|t} = mu_{t|t-1} + K_t r_t`` and, in Joseph form,
      ``P_{t|t} = (I - K_t C) P_{t|t-1} (I - K_t C)^T + K_t R K_t^T``;
    - a masked step skips the update: ``mu_{t|t} = mu_{t|t-1}``,
      ``P_{t|t} = P_{t|t-1}``;
    - predict ``mu_{t+1|t} = A mu_{t|t}`` and ``P_{t+1|t} = A P_{t|t} A^T + Q``.

    Returns a :class:`FilteredPosterior`.
    """
    z_dim, obs_dim = _check_model(A, C, Q, R, mu0, P0)
    observed = _check_observations(x, mask, obs_dim, A)  # (B, T) bool
    batch, num_steps = observed.shape
    eye = torch.eye(z_dim, dtype=A.dtype, device=A.device)
    mu_pred = mu0.expand(batch, z_dim)  # (B, z_dim)
    P_pred = P0.expand(batch, z_dim, z_dim)  # (B, z_dim, z_dim)
    log_lik = x.new_zeros(batch)  # (B,)
    filtered_means, filtered_covs, predicted_means, predicted_covs = [], [], [], []
    for t in range(num_steps):
        predicted_means.append(mu_pred)
        predicted_covs.append(P_pred)
        obs_t = observed[:, t]  # (B,)
        x_pred = mu_pred @ C.mT  # (B, obs_dim)
        # Missing steps get a zero innovation: NaN placeholders never enter the graph.
        r = torch.where(obs_t[:, None], x[:, t], x_pred) - x_pred  # (B, obs_dim)
        S = _symmetrize(C @ P_pred @ C.mT + R)  # (B, obs_dim, obs_dim)
        L_S = torch.linalg.cholesky(S)
        # K^T = S^{-1} C P_{t|t-1} because P_{t|t-1} is symmetric.
        K = torch.cholesky_solve(C @ P_pred, L_S).mT  # (B, z_dim, obs_dim)
        mu_upd = mu_pred + (K @ r[..., None])[..., 0]
        I_KC = eye - K @ C
        P_upd = _symmetrize(I_KC @ P_pred @ I_KC.mT + K @ R @ K.mT)
        # log N(r; 0, S) = -1/2 |L_S^{-1} r|^2 - sum log diag L_S - obs_dim/2 log 2 pi
        u = torch.linalg.solve_triangular(L_S, r[..., None], upper=False)[..., 0]
        log_det_half = L_S.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ll_t = (
            -0.5 * u.square().sum(-1)
            - log_det_half
            - 0.5 * obs_dim * math.log(2 * math.pi)
        )
        log_lik = log_lik + torch.where(obs_t, ll_t, torch.zeros_like(ll_t))
        mu_filt = torch.where(obs_t[:, None], mu_upd, mu_pred)
        P_filt = torch.where(obs_t[:, None, None], P_upd, P_pred)
        filtered_means.append(mu_filt)
        filtered_covs.append(P_filt)
        mu_pred = mu_filt @ A.mT
        P_pred = _symmetrize(A @ P_filt @ A.mT + Q)
    return FilteredPosterior(
        filtered_means=torch.stack(filtered_means, dim=1),
        filtered_covariances=torch.stack(filtered_covs, dim=1),
        predicted_means=torch.stack(predicted_means, dim=1),
        predicted_covariances=torch.stack(predicted_covs, dim=1),
        log_likelihood=log_lik,
    )


def log_likelihood(
    x: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    mu0: torch.Tensor,
    P0: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact ``log p(x_{1:T})`` of each sequence of ``x (B, T, obs_dim)``: ``(B,)``.

    ``sum_t mask_t log N(x_t; C mu_{t|t-1}, C P_{t|t-1} C^T + R)``, the innovation form
    computed by :func:`kalman_filter`; masked steps are marginalised out, so
    they contribute nothing. Differentiable in every parameter.
    """
    return kalman_filter(x, A, C, Q, R, mu0, P0, mask).log_likelihood


class SmoothedPosterior(NamedTuple):
    """Output of :func:`rts_smoother`.

    - ``smoothed_means (B, T, z_dim)``, ``smoothed_covariances (B, T, z_dim, z_dim)``:
      mean and covariance of ``p(z_t | x_{1:T})``, given the observed steps only.
    - ``log_likelihood (B,)``: ``log p(x_{1:T})``, as from :func:`kalman_filter`.
    """

    smoothed_means: torch.Tensor
    smoothed_covariances: torch.Tensor
    log_likelihood: torch.Tensor


def rts_smoother(
    x: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    mu0: torch.Tensor,
    P0: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> SmoothedPosterior:
    """Rauch-Tung-Striebel smoother: ``p(z_t | x_{1:T})`` for ``x (B, T, obs_dim)``.

    Runs :func:`kalman_filter`, then goes backwards from ``t = T - 1``:

    - gain ``J_t = P_{t|t} A^T P_{t+1|t}^{-1}`` (a Cholesky solve);
    - ``mu_{t|T} = mu_{t|t} + J_t (mu_{t+1|T} - mu_{t+1|t})``;
    - ``P_{t|T} = P_{t|t} + J_t (P_{t+1|T} - P_{t+1|t}) J_t^T``, evaluated as the
      sum of positive semi-definite terms
      ``(I - J_t A) P_{t|t} (I - J_t A)^T + J_t Q J_t^T + J_t P_{t+1|T} J_t^T``.

    At ``t = T`` the smoothed and filtered posteriors coincide.
    """
    filtered = kalman_filter(x, A, C, Q, R, mu0, P0, mask)
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    mu_s = filtered.filtered_means[:, -1]  # (B, z_dim)
    P_s = filtered.filtered_covariances[:, -1]  # (B, z_dim, z_dim)
    means, covs = [mu_s], [P_s]
    for t in range(x.shape[1] - 2, -1, -1):
        mu_f = filtered.filtered_means[:, t]
        P_f = filtered.filtered_covariances[:, t]
        mu_p = filtered.predicted_means[:, t + 1]
        L_p = torch.linalg.cholesky(filtered.predicted_covariances[:, t + 1])
        # J^T = P_{t+1|t}^{-1} A P_{t|t} because both covariances are symmetric.
        J = torch.cholesky_solve(A @ P_f, L_p).mT  # (B, z_dim, z_dim)
        mu_s = mu_f + (J @ (mu_s - mu_p)[..., None])[..., 0]
        I_JA = eye - J @ A
        P_s = _symmetrize(I_JA @ P_f @ I_JA.mT + J @ Q @ J.mT + J @ P_s @ J.mT)
        means.append(mu_s)
        covs.append(P_s)
    return SmoothedPosterior(
        smoothed_means=torch.stack(means[::-1], dim=1),
        smoothed_covariances=torch.stack(covs[::-1], dim=1),
        log_likelihood=filtered.log_likelihood,
    )


def to_pyro_gaussian_hmm(
    A: torch.Tensor,
    C: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    mu0: torch.Tensor,
    P0: torch.Tensor,
    num_steps: int,
) -> dist.GaussianHMM:
    """The same model as a :class:`pyro.distributions.GaussianHMM`.

    Its events are ``(num_steps, obs_dim)``.

    Pyro's GaussianHMM starts from a state ``z_0`` *before* the first
    observation and uses row vectors, ``z_t = z_{t-1} @ M_t + w_t`` and
    ``x_t = z_t @ H + v_t``. It matches our model exactly with time-varying
    transitions: ``M_1 = 0`` with ``w_1 ~ N(mu0, P0)``, so ``z_1`` forgets
    the arbitrary ``z_0 ~ N(0, I)``, then ``M_t = A^T`` with ``w_t ~ N(0, Q)``,
    and ``H = C^T`` with ``v_t ~ N(0, R)``. Its ``log_prob`` on
    ``x (B, num_steps, obs_dim)`` is ``log p(x_{1:T})``, shape ``(B,)``.
    """
    z_dim, obs_dim = _check_model(A, C, Q, R, mu0, P0)
    _check_count("num_steps", num_steps)
    rest = num_steps - 1
    # (T, z_dim, z_dim), rows index the old state and columns the new one.
    transition_matrix = torch.cat(
        [A.new_zeros(1, z_dim, z_dim), A.mT.expand(rest, z_dim, z_dim)]
    )
    transition_dist = dist.MultivariateNormal(
        torch.cat([mu0[None], mu0.new_zeros(rest, z_dim)]),  # (T, z_dim)
        covariance_matrix=torch.cat(
            [P0[None], Q.expand(rest, z_dim, z_dim)]
        ),  # (T, z_dim, z_dim)
    )
    eye = torch.eye(z_dim, dtype=A.dtype, device=A.device)
    initial_dist = dist.MultivariateNormal(mu0.new_zeros(z_dim), covariance_matrix=eye)
    observation_dist = dist.MultivariateNormal(
        mu0.new_zeros(obs_dim), covariance_matrix=R
    )
    return dist.GaussianHMM(
        initial_dist,
        transition_matrix,
        transition_dist,
        C.mT,
        observation_dist,
        duration=num_steps,
    )
