"""Evaluate a trained DMM: ``python -m dmm_helpers.evaluate --checkpoint PATH``.

Introduced in chapters 06 and 07. Two numbers, both in nats per time step
(summed over the sequences of a split, divided by its number of time steps):

- the **bound**: minus the ELBO, what Pyro's tutorial and the paper's tables
  report as the "test negative ELBO"; estimated here as the average of the
  ``K`` importance log-weights below, an unbiased estimate of the ELBO;
- the **importance-sampled NLL** (Burda et al., 2016): with ``K`` draws
  ``z^(k) ~ q(z | x)`` and weights ``w_k = p(x, z^(k)) / q(z^(k) | x)``,
  ``log p(x) ~ log (1/K) sum_k w_k``. It is never above the bound (Jensen)
  and tends to ``log p(x)`` as ``K`` grows; the paper used ``K = 2000``.

The ``K`` draws are taken a chunk at a time, so memory stays bounded by
``--chunk-size`` copies of a batch whatever ``K`` is.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from dmm_helpers.data import Batch, make_batch
from dmm_helpers.dmm import DMM
from dmm_helpers.elbo import elbo_terms
from dmm_helpers.train import load_data, load_model, resolve_device


class Evaluation(NamedTuple):
    """Per-sequence estimates from :func:`importance_sampled_log_likelihood`.

    Attributes:
        log_likelihood: ``(num_sequences,)`` ``log (1/K) sum_k w_k``.
        elbo: ``(num_sequences,)`` ``(1/K) sum_k log w_k``.
        lengths: ``(num_sequences,)`` time steps of each sequence.
        reconstruction: ``(num_sequences,)`` ``(1/K) sum_k log p(x | z^(k))``,
            the ELBO's first term on the same draws; ``reconstruction - elbo``
            is its (sampled) KL term.
    """

    log_likelihood: torch.Tensor
    elbo: torch.Tensor
    lengths: torch.Tensor
    reconstruction: torch.Tensor


def _repeat(batch: Batch, copies: int) -> Batch:
    """``copies`` copies of every sequence, stacked along the batch: ``(copies * B, ...)``."""
    return Batch(*(field.repeat(copies, *([1] * (field.dim() - 1))) for field in batch))


@torch.no_grad()
def importance_sampled_log_likelihood(
    model: DMM,
    sequences: Sequence[torch.Tensor],
    num_samples: int = 100,
    *,
    chunk_size: int = 50,
    batch_size: int = 20,
) -> Evaluation:
    """Importance-sampled ``log p(x)`` and the ELBO of each sequence, with the guide as proposal.

    ``log w_k = log p(x, z^(k)) - log q(z^(k) | x)`` is the single-sample
    ELBO with the KL term taken by sampling, so its mean over ``k`` is an
    unbiased ELBO estimate and its log-mean-exp a consistent (and, in
    expectation, lower) bound on ``log p(x)`` that is above the ELBO.
    """
    counts = (
        ("num_samples", num_samples),
        ("chunk_size", chunk_size),
        ("batch_size", batch_size),
    )
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(sequences) == 0:
        raise ValueError("no sequences to evaluate")
    was_training = model.training
    model.eval()
    device, dtype = model.z_0.device, model.z_0.dtype
    log_likelihoods, elbos, lengths, reconstructions = [], [], [], []
    try:
        for start in range(0, len(sequences), batch_size):
            batch = make_batch(
                [s.to(dtype) for s in sequences[start : start + batch_size]],
                device=device,
            )
            n = batch.x.shape[0]
            h = model.encode(batch)  # (n, time, rnn_dim): the same for every copy
            log_sum = torch.full(
                (n,), -math.inf, dtype=dtype, device=device
            )  # log sum_k w_k
            weight_sum = torch.zeros(n, dtype=dtype, device=device)  # sum_k log w_k
            log_lik_sum = torch.zeros(
                n, dtype=dtype, device=device
            )  # sum_k log p(x | z^(k))
            for done in range(0, num_samples, chunk_size):
                copies = min(chunk_size, num_samples - done)
                repeated = _repeat(batch, copies)
                h_packed = nn.utils.rnn.pack_padded_sequence(
                    h.repeat(copies, 1, 1),
                    repeated.lengths.cpu(),
                    batch_first=True,
                    enforce_sorted=False,
                )
                terms = elbo_terms(model, repeated, kl="sampled", h=h_packed)
                log_w = (terms.log_lik - terms.kl).view(copies, n)  # (copies, n)
                log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, dim=0))
                weight_sum += log_w.sum(0)
                log_lik_sum += terms.log_lik.view(copies, n).sum(0)
            log_likelihoods.append(log_sum - math.log(num_samples))
            elbos.append(weight_sum / num_samples)
            lengths.append(batch.lengths)
            reconstructions.append(log_lik_sum / num_samples)
    finally:
        model.train(was_training)
    return Evaluation(
        torch.cat(log_likelihoods),
        torch.cat(elbos),
        torch.cat(lengths),
        torch.cat(reconstructions),
    )


def evaluate(
    model: DMM,
    sequences: Sequence[torch.Tensor],
    num_samples: int = 100,
    *,
    chunk_size: int = 50,
    batch_size: int = 20,
) -> dict[str, float | int]:
    """The bound and the importance-sampled NLL per time step, and what they were computed on."""
    result = importance_sampled_log_likelihood(
        model, sequences, num_samples, chunk_size=chunk_size, batch_size=batch_size
    )
    steps = int(result.lengths.sum())
    return {
        "bound_per_step": -float(result.elbo.sum()) / steps,
        "nll_per_step": -float(result.log_likelihood.sum()) / steps,
        "sequences": len(sequences),
        "time_steps": steps,
        "samples": num_samples,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dmm_helpers.evaluate",
        description="Test bound and importance-sampled NLL (nats per time step) of a trained DMM.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="best.pt or checkpoint.pt of a run"
    )
    parser.add_argument(
        "--data", default="jsb", help='"jsb", "bach" or a JSON/MIDI path (default: jsb)'
    )
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument(
        "--samples", type=int, default=100, help="importance samples K per sequence"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=50, help="samples drawn at once"
    )
    parser.add_argument(
        "--batch-size", type=int, default=20, help="sequences evaluated at once"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda"')
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = load_model(args.checkpoint, device)
    sequences = load_data(args.data)[args.split]
    result = evaluate(
        model,
        sequences,
        args.samples,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
    )
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "data": args.data,
                "split": args.split,
                "device": str(device),
                "seed": args.seed,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
