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
from tqdm.auto import tqdm

from dmm_helpers.checkpoint import load_model
from dmm_helpers.checks import positive_int
from dmm_helpers.data import Batch, load_data, make_batch
from dmm_helpers.devices import resolve_device
from dmm_helpers.dmm import DMM
from dmm_helpers.elbo import elbo_terms


class ImportanceWeights(NamedTuple):
    """``K`` draws ``z^(k) ~ q(z | x)`` for every sequence of a batch, scored.

    Attributes:
        log_weight: ``(K, batch)`` ``log w_k = log p(x, z^(k)) - log q(z^(k) | x)``.
        log_lik: ``(K, batch)`` ``log p(x | z^(k))``, the reconstruction part.
    """

    log_weight: torch.Tensor
    log_lik: torch.Tensor


@torch.no_grad()
def importance_weights(
    model: DMM, batch: Batch, num_samples: int, *, chunk_size: int = 50
) -> ImportanceWeights:
    """Draw ``num_samples`` paths from the guide per sequence and weigh them.

    ``log w_k`` is the single-sample ELBO of :func:`~dmm_helpers.elbo.elbo_terms`
    with the KL term taken at the sample (``kl_estimator="sampled"``), so its
    mean over ``k`` is an unbiased ELBO and its log-mean-exp an
    importance-sampled estimate of ``log p(x)``. The backward RNN reads the
    batch once; the draws are taken ``chunk_size`` copies of the batch at a
    time, so memory is bounded whatever ``K`` is. Call in eval mode (as
    :func:`importance_sampled_log_likelihood` does) to switch RNN dropout off.
    """
    num_samples = positive_int("num_samples", num_samples)
    chunk_size = positive_int("chunk_size", chunk_size)
    model.check_batch(batch)
    n = batch.x.shape[0]
    h = model.encode(batch)  # (n, time, rnn_dim): the same for every copy
    log_weights, log_liks = [], []
    for done in range(0, num_samples, chunk_size):
        copies = min(chunk_size, num_samples - done)
        repeated = Batch(*(f.repeat(copies, *([1] * (f.dim() - 1))) for f in batch))
        h_packed = nn.utils.rnn.pack_padded_sequence(
            h.repeat(copies, 1, 1),
            repeated.lengths.cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        terms = elbo_terms(model, repeated, "sampled", h=h_packed, check=False)
        log_weights.append((terms.log_lik - terms.kl).view(copies, n))
        log_liks.append(terms.log_lik.view(copies, n))
    return ImportanceWeights(torch.cat(log_weights), torch.cat(log_liks))


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

    def per_step(self) -> dict[str, float | int]:
        """The numbers papers report, in nats per time step, from the same draws.

        ``bound`` (minus the ELBO) ``= reconstruction + kl``, ``nll`` (the
        importance-sampled negative log-likelihood, never above the bound on
        the same draws), each summed over the sequences and divided by their
        ``time_steps``; and how many ``sequences`` and ``time_steps`` that is.
        """
        steps = int(self.lengths.sum())
        return {
            "bound": -float(self.elbo.sum()) / steps,
            "reconstruction": -float(self.reconstruction.sum()) / steps,
            "kl": float((self.reconstruction - self.elbo).sum()) / steps,
            "nll": -float(self.log_likelihood.sum()) / steps,
            "sequences": len(self.lengths),
            "time_steps": steps,
        }


@torch.no_grad()
def importance_sampled_log_likelihood(
    model: DMM,
    sequences: Sequence[torch.Tensor],
    num_samples: int = 100,
    *,
    chunk_size: int = 50,
    batch_size: int = 20,
    progress: bool = False,
) -> Evaluation:
    """Importance-sampled log p(x) and the ELBO of each sequence (guide as proposal).

    The sequences are taken ``batch_size`` at a time and weighed by
    :func:`importance_weights`: ``log (1/K) sum_k w_k`` is a consistent (and,
    in expectation, lower) bound on ``log p(x)`` that is above the ELBO,
    ``(1/K) sum_k log w_k``. ``progress`` shows a bar over the batches.
    """
    num_samples = positive_int("num_samples", num_samples)
    chunk_size = positive_int("chunk_size", chunk_size)
    batch_size = positive_int("batch_size", batch_size)
    if len(sequences) == 0:
        raise ValueError("no sequences to evaluate")
    was_training = model.training
    model.eval()
    device, dtype = model.z_0.device, model.z_0.dtype
    starts = range(0, len(sequences), batch_size)
    log_likelihoods, elbos, lengths, reconstructions = [], [], [], []
    try:
        for start in tqdm(
            starts, desc="evaluating", unit="batch", disable=not progress
        ):
            chunk = [s.to(dtype) for s in sequences[start : start + batch_size]]
            batch = make_batch(chunk, device=device)
            weights = importance_weights(
                model, batch, num_samples, chunk_size=chunk_size
            )
            log_likelihoods.append(
                torch.logsumexp(weights.log_weight, dim=0) - math.log(num_samples)
            )
            elbos.append(weights.log_weight.mean(0))
            lengths.append(batch.lengths)
            reconstructions.append(weights.log_lik.mean(0))
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
    progress: bool = False,
) -> dict[str, float | int]:
    """The bound, its two terms and the importance-sampled NLL per time step.

    Keys ``bound_per_step``, ``reconstruction_per_step``, ``kl_per_step`` and
    ``nll_per_step`` (nats), and ``sequences``, ``time_steps`` and
    ``samples`` (``K``): :meth:`Evaluation.per_step` of
    :func:`importance_sampled_log_likelihood`.
    """
    result = importance_sampled_log_likelihood(
        model,
        sequences,
        num_samples,
        chunk_size=chunk_size,
        batch_size=batch_size,
        progress=progress,
    ).per_step()
    per_step = {f"{k}_per_step": result[k] for k in ("bound", "reconstruction", "kl")}
    return {
        **per_step,
        "nll_per_step": result["nll"],
        "sequences": result["sequences"],
        "time_steps": result["time_steps"],
        "samples": num_samples,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dmm_helpers.evaluate",
        description="Test bound and importance-sampled NLL (nats per time step) "
        "of a trained DMM.",
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
