"""A vectorised ELBO for the deep Markov model, equal to Pyro's on the same draws.

Introduced in chapter 05 (``notebooks/05_elbo_masking_annealing.ipynb``).

For one sequence with ``T`` real steps and annealing factor ``beta``,

``ELBO = sum_t E_q[log p(x_t | z_t)] - beta * sum_t E_q[KL_t]``, where
``KL_t = KL(q(z_t | z_{t-1}, h_t) || p(z_t | z_{t-1}))``,

estimated with one joint sample ``z_{1:T} ~ q``. Pyro's ``Trace_ELBO`` and
``TraceMeanField_ELBO`` walk the model and the guide one sample site at a
time. Here only the guide's combiner loop is sequential (``z_t`` needs
``z_{t-1}``); once ``z_{1:T}`` is drawn, every transition, emission and KL
term of every step is computed at once.

Convention: :func:`elbo` returns the ELBO summed over the sequences of the
batch, a number to *maximise*; Pyro's ``SVI.step`` returns its negative (the
loss). :func:`elbo_terms` gives the per-sequence pieces.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import pyro.distributions as dist
import torch
from torch import nn

from dmm_helpers.checks import finite_number, shape_of
from dmm_helpers.data import Batch
from dmm_helpers.dmm import DMM, preceding_notes

KLEstimator = Literal["analytic", "sampled"]
KL_ESTIMATORS: tuple[KLEstimator, ...] = ("analytic", "sampled")
"""How :func:`elbo_terms` takes the KL term: in closed form, or at the sample."""


class ELBOTerms(NamedTuple):
    """The two parts of a single-sample ELBO, per sequence and per step.

    Attributes:
        log_lik: ``(batch,)`` ``sum_t mask_t log p(x_t | z_t)``.
        kl: ``(batch,)`` ``sum_t mask_t KL_t``, where ``KL_t`` is the
            closed-form ``KL(q(z_t | z_{t-1}, h_t) || p(z_t | z_{t-1}))`` at the
            sampled ``z_{t-1}`` (``kl_estimator="analytic"``) or its one-sample
            estimate ``log q(z_t | ...) - log p(z_t | z_{t-1})``
            (``kl_estimator="sampled"``).
        z: ``(batch, time, z_dim)`` the posterior sample the terms were
            computed on.
        step_log_lik: ``(batch, time)`` ``log p(x_t | z_t)`` of each step.
        step_kl: ``(batch, time)`` ``KL_t`` of each step.

    Every per-step tensor is zero at padded steps, so ``log_lik`` is
    ``step_log_lik.sum(1)`` and ``kl`` is ``step_kl.sum(1)``.
    """

    log_lik: torch.Tensor
    kl: torch.Tensor
    z: torch.Tensor
    step_log_lik: torch.Tensor
    step_kl: torch.Tensor


def gaussian_kl_terms(
    loc_q: torch.Tensor,
    scale_q: torch.Tensor,
    loc_p: torch.Tensor,
    scale_p: torch.Tensor,
) -> torch.Tensor:
    """``KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2))`` of each coordinate.

    ``KL = 1/2 [r^2 + ((loc_q - loc_p) / scale_p)^2 - 1 - 2 log r]`` with
    ``r = scale_q / scale_p``. Shapes: ``(..., d)`` each -> ``(..., d)``.
    """
    ratio = scale_q / scale_p  # (..., d)
    distance = (loc_q - loc_p) / scale_p  # (..., d)
    return 0.5 * (ratio.square() + distance.square() - 1 - 2 * ratio.log())


def gaussian_kl(
    loc_q: torch.Tensor,
    scale_q: torch.Tensor,
    loc_p: torch.Tensor,
    scale_p: torch.Tensor,
) -> torch.Tensor:
    """``KL(N(loc_q, diag(scale_q^2)) || N(loc_p, diag(scale_p^2)))``, summed over dims.

    The sum over the last dimension of :func:`gaussian_kl_terms`: the
    coordinates are independent. Shapes: ``(..., d)`` each -> ``(...)``.
    """
    return gaussian_kl_terms(loc_q, scale_q, loc_p, scale_p).sum(-1)


def _pack(padded: torch.Tensor, lengths: torch.Tensor) -> nn.utils.rnn.PackedSequence:
    """The real steps of ``(batch, time, ...)``, time-major, longest sequences first."""
    return nn.utils.rnn.pack_padded_sequence(
        padded, lengths.cpu(), batch_first=True, enforce_sorted=False
    )


class GuideSample(NamedTuple):
    """One draw ``z_{1:T} ~ q`` on the real steps, rows as in ``PackedSequence.data``.

    Attributes:
        loc, scale: ``(N, z_dim)`` of ``q(z_t | z_{t-1}, h_t)`` before any flow.
        z_base: ``(N, z_dim)`` the Gaussian draw ``loc + scale * eps``.
        z: ``(N, z_dim)`` the sample: ``z_base`` pushed through the flows (if any).
        log_det: ``(N,)`` ``log |det dz / dz_base|`` summed over the flows (zero
            without).
    """

    loc: torch.Tensor
    scale: torch.Tensor
    z_base: torch.Tensor
    z: torch.Tensor
    log_det: torch.Tensor


def through_flows(
    dmm: DMM, z: torch.Tensor, h: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Push ``z`` ``(n, z_dim)`` through the guide's flows: ``(z', log |det dz'/dz|)``.

    Without flows (``num_iafs = 0``), ``z`` itself and zeros ``(n,)``. ``h``
    ``(n, h_dim)``, the guide's reading of the same rows, is read by flows
    with ``iaf_context`` only.
    """
    log_det = torch.zeros_like(z[:, 0])  # (n,)
    for flow in dmm.iaf_transforms(h):  # none unless num_iafs > 0
        z_next = flow(z)
        log_det = log_det + flow.log_abs_det_jacobian(z, z_next)
        z = z_next
    return z, log_det


def sample_guide(
    dmm: DMM, h: nn.utils.rnn.PackedSequence, eps: torch.Tensor
) -> GuideSample:
    """The guide's loop over time, the ELBO's only sequential part.

    ``h`` is the guide's reading of the batch (:meth:`DMM.summarise`; for
    the paper's ST-R guide, the backward RNN's output), ``eps`` ``(N,
    z_dim)`` standard normal draws in the same row order. Rows of step ``t``
    belong to the ``batch_sizes[t]`` sequences still running, longest
    first, so each step updates a prefix of the previous states. The
    combiner's ``h_t`` half is computed for all steps in one product first,
    so each step adds only the ``z_{t-1}`` half. A mean-field guide has no
    ``z_{t-1}``: all its steps are drawn at once.
    """
    if not dmm.structured:
        loc, scale = dmm.mean_field(h.data)  # (N, z_dim) each
        z_base = loc + scale * eps  # reparameterised
        return GuideSample(loc, scale, z_base, *through_flows(dmm, z_base, h.data))
    sizes = h.batch_sizes.tolist()  # sequences still running at each step
    h_projected = dmm.combiner.project_rnn(h.data)  # (N, 2 z_dim)
    z_prev = dmm.z_q_0.expand(sizes[0], -1)  # (batch, z_dim)
    locs, scales, z_bases, zs, log_dets = [], [], [], [], []
    steps = zip(h_projected.split(sizes), eps.split(sizes), h.data.split(sizes))
    for h_part, eps_t, h_t in steps:
        running = h_t.shape[0]
        loc, scale = dmm.combiner.step(z_prev[:running], h_part)  # (running, z_dim)
        # Reparameterised: gradients flow through loc and scale.
        z_base = loc + scale * eps_t
        z_t, log_det = through_flows(dmm, z_base, h_t)
        locs.append(loc)
        scales.append(scale)
        z_bases.append(z_base)
        log_dets.append(log_det)
        zs.append(z_t)
        z_prev = z_t
    return GuideSample(
        *(torch.cat(parts) for parts in (locs, scales, z_bases, zs, log_dets))
    )


def previous_notes(dmm: DMM, batch: Batch) -> torch.Tensor | None:
    """``x_{t-1}`` for every real step, packed: what an augmented DMM also reads.

    Rows as :func:`elbo_terms` packs ``batch.x``, ``(N, input_dim)``, with
    ``x_0 = 0`` before each sequence's first step. ``None`` for a DMM that is
    not augmented (its networks read ``z`` alone).
    """
    if not dmm.config.augmented:
        return None
    return _pack(preceding_notes(batch.x), batch.lengths).data  # (N, input_dim)


def prior_at_sample(
    dmm: DMM,
    z: torch.Tensor,
    batch_sizes: torch.Tensor,
    x_prev: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``loc``, ``scale`` of ``p(z_t | z_{t-1})`` for every packed row of ``z``.

    ``z`` is ``(N, z_dim)`` in ``PackedSequence`` row order with these
    ``batch_sizes``; a first step's prior is :meth:`DMM.prior` of ``z_0`` for a
    first step, any other step's the transition of the row of the same
    sequence one step before. ``x_prev``, :func:`previous_notes` (in the same
    rows), is read by an augmented DMM only.
    """
    sizes = batch_sizes.tolist()
    first_x = later_x = None
    if x_prev is not None:  # augmented: the first steps read x_0 = 0
        first_x, later_x = x_prev[: sizes[0]], x_prev[sizes[0] :]
    z_0 = dmm.z_0.expand(sizes[0], -1)  # (batch, z_dim)
    first_loc, first_scale = dmm.prior(z_0, True, first_x)  # p(z_1): (batch, z_dim)
    z_prev = [z_t[:n] for z_t, n in zip(z.split(sizes), sizes[1:])]
    if not z_prev:  # every sequence has one step
        return first_loc, first_scale
    loc, scale = dmm.prior(torch.cat(z_prev), x_prev=later_x)  # (N - batch, z_dim)
    return torch.cat([first_loc, loc]), torch.cat([first_scale, scale])


def elbo_terms(
    dmm: DMM,
    batch: Batch,
    kl_estimator: KLEstimator = "analytic",
    noise: torch.Tensor | None = None,
    h: nn.utils.rnn.PackedSequence | None = None,
    *,
    check: bool = True,
) -> ELBOTerms:
    """Draw ``z_{1:T} ~ q`` once, then score every step of every sequence at once.

    Padding is never computed, rather than computed and masked: like the
    backward RNN, everything works on ``PackedSequence`` rows, the ``N =
    batch.lengths.sum()`` real steps. Once :func:`sample_guide` has drawn
    ``z``, the transitions, emissions and KL terms of all of them are one
    ``(N, ...)`` computation each.

    With ``kl_estimator="sampled"``, ``log_lik - kl`` is ``log p(x, z) - log
    q(z | x)`` per sequence: an importance weight of ``log p(x)``.

    Args:
        dmm: the model and guide (a :class:`~dmm_helpers.dmm.DMM`).
        batch: a :class:`~dmm_helpers.data.Batch`; padded steps count for nothing.
        kl_estimator: ``"analytic"``: the Gaussian KL in closed form, as Pyro's
            ``TraceMeanField_ELBO``; ``"sampled"``: ``log q - log p`` at the
            sample, as ``Trace_ELBO``. With flows (``num_iafs > 0``) ``q`` has no
            closed-form KL and both options sample, as ``TraceMeanField_ELBO``
            falls back to doing.
        noise: ``(batch, time, z_dim)`` standard normal draws ``eps``; the
            guide's Gaussian draw at step ``t`` is ``loc_t + scale_t * eps_t``
            (entries at padded steps are ignored). Default: fresh draws. Pass
            them to reproduce a given sample.
        h: the guide's reading of ``batch``, packed as :meth:`DMM.summarise`
            returns it. Default: computed here. Pass it when it is known
            already, e.g. for copies of the same sequences.
        check: check ``batch`` against the model (:meth:`DMM.check_batch`).
            The training loop turns it off: its batches come from
            :func:`~dmm_helpers.data.make_batch` and were checked where they
            were made, and the check costs host synchronisations on a GPU.

    Returns:
        :class:`ELBOTerms`: per-sequence ``log_lik`` and ``kl``, the sample
        ``z`` and the per-step terms (zero at padded steps).
    """
    if check:
        dmm.check_batch(batch)
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f'kl_estimator must be "analytic" or "sampled", got {kl_estimator!r}'
        )
    batch_size, t_max, _ = batch.x.shape
    z_dim = dmm.config.z_dim
    if h is None:
        h = dmm.summarise(batch)  # packed: .data (N, rnn_dim)
    elif h.data.shape[0] != int(batch.lengths.sum()):
        raise ValueError(
            f"h holds {h.data.shape[0]} steps but the batch has "
            f"{int(batch.lengths.sum())}"
        )
    if noise is None:
        eps = torch.randn(
            len(h.data), z_dim, dtype=batch.x.dtype, device=batch.x.device
        )
    elif isinstance(noise, torch.Tensor) and noise.shape == (batch_size, t_max, z_dim):
        eps = _pack(noise, batch.lengths).data  # (N, z_dim)
    else:
        expected = (batch_size, t_max, z_dim)
        raise ValueError(
            "noise must have shape (batch, time, z_dim) = "
            f"{expected}; got {shape_of(noise)}"
        )
    q = sample_guide(dmm, h, eps)

    x_prev = previous_notes(dmm, batch)  # (N, input_dim), or None: not augmented
    p_loc, p_scale = prior_at_sample(dmm, q.z, h.batch_sizes, x_prev)  # (N, z_dim)
    log_lik = dmm.emission_dist(q.z, x_prev).log_prob(
        _pack(batch.x, batch.lengths).data
    )  # (N,)
    if kl_estimator == "analytic" and dmm.config.num_iafs == 0:
        kl_t = gaussian_kl(q.loc, q.scale, p_loc, p_scale)  # (N,)
    else:
        # Change of variables:
        # log q(z) = log N(z_base; loc, scale) - log |det dz / dz_base|.
        log_q = (
            dist.Normal(q.loc, q.scale).log_prob(q.z_base).sum(-1) - q.log_det
        )  # (N,)
        log_p = dist.Normal(p_loc, p_scale).log_prob(q.z).sum(-1)  # (N,)
        kl_t = log_q - log_p

    # Back to (batch, time, ...), zero at padded steps.
    per_step = torch.cat([log_lik[:, None], kl_t[:, None], q.z], dim=-1)  # (N, 2 + z)
    padded, _ = nn.utils.rnn.pad_packed_sequence(
        h._replace(data=per_step), batch_first=True, total_length=t_max
    )  # (batch, time, 2 + z_dim)
    step_log_lik, step_kl = padded[..., 0], padded[..., 1]  # (batch, time) each
    return ELBOTerms(
        log_lik=step_log_lik.sum(1),
        kl=step_kl.sum(1),
        z=padded[..., 2:],
        step_log_lik=step_log_lik,
        step_kl=step_kl,
    )


def elbo(
    dmm: DMM,
    batch: Batch,
    annealing_factor: float = 1.0,
    kl_estimator: KLEstimator = "analytic",
    noise: torch.Tensor | None = None,
    *,
    check: bool = True,
) -> torch.Tensor:
    """The single-sample ELBO summed over the batch, ``sum_b (log_lik_b - beta kl_b)``.

    Equal, on the same draws, to minus the loss of Pyro's
    ``TraceMeanField_ELBO`` (``kl_estimator="analytic"``) or ``Trace_ELBO``
    (``"sampled"``) on ``dmm.model``/``dmm.guide`` with the same
    ``annealing_factor`` ``beta``. Differentiable: ``(-elbo(...)).backward()``
    trains the model and the guide with any torch optimiser; divided by
    ``batch.lengths.sum()`` it is the per-time-step bound papers report. See
    :func:`elbo_terms` for the arguments.
    """
    finite_number("annealing_factor", annealing_factor, minimum=0)
    terms = elbo_terms(dmm, batch, kl_estimator, noise, check=check)
    return terms.log_lik.sum() - annealing_factor * terms.kl.sum()
