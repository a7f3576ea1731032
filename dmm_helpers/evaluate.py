"""Evaluate a trained DMM: ``python -m dmm_helpers.evaluate --checkpoint PATH``.

Introduced in chapters 06 and 07. Two numbers, both in nats per time step
(summed over the sequences of a split, divided by its number of time steps):

- the **bound**: minus the ELBO, what Pyro's tutorial and the paper's tables
  report as the "test negative ELBO"; estimated here as the average of the
  ``K`` importance log-weights below, an unbiased estimate of the ELBO;
- the **importance-sampled NLL** (Burda et al., 2016): with ``K`` draws
  ``z^(k) ~ q(z | x)`` and weights ``w_k = p(x, z^(k)) / q(z^(k) | x)``,
  ``log p(x) ~ log (1/K) sum_k w_k``. It is never above the bound (Jensen)
  and tends to ``log p(x)`` as ``K`` grows; the authors' code used ``K = 2000``
  (``expt-polyphonic/train_dkf.py``; the paper does not give ``K``).

The ``K`` draws are taken a chunk at a time, so memory stays bounded by
``--chunk-size`` copies of a batch whatever ``K`` is. The command shows a
progress bar over the batches when stderr is a terminal (``--progress`` or
``--no-progress`` to choose); its flags and errors follow
:mod:`dmm_helpers.cli` (a bad flag exits 2, a bad checkpoint or data 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import NamedTuple

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from dmm_helpers.checkpoint import load_model
from dmm_helpers.checks import positive_int
from dmm_helpers.cli import (
    COUNT,
    SEED,
    add_debug_flag,
    errors_reported,
    new_parser,
    number_flag,
    text_flag,
)
from dmm_helpers.data import Batch, load_data, make_batch
from dmm_helpers.devices import DEVICES, resolve_device
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


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m dmm_helpers.evaluate``, each checked as it is parsed."""
    parser = new_parser(
        "python -m dmm_helpers.evaluate",
        "Test bound and importance-sampled NLL (nats per time step) of a trained "
        "DMM, printed as one JSON object.",
    )
    data = parser.add_argument_group("data", "what the model is scored on")
    data.add_argument(
        "--data",
        type=text_flag,
        default="jsb",
        help='"jsb", "bach" or the path of a JSON file or a folder of MIDI files, '
        "as in training. Default: jsb.",
    )
    data.add_argument(
        "--split",
        default="test",
        choices=("train", "valid", "test"),
        help="The split to score. Default: test.",
    )
    model = parser.add_argument_group("model", "the trained model")
    model.add_argument(
        "--checkpoint",
        type=text_flag,
        required=True,
        help="best.pt or checkpoint.pt of a run, or a shipped model.pt.",
    )
    estimate = parser.add_argument_group("estimate", "the importance sampling")
    for flag, default, metavar, about in (
        (
            "--samples",
            100,
            "K",
            "Importance samples K per sequence (the authors' code: 2000).",
        ),
        (
            "--chunk-size",
            50,
            "N",
            "Samples drawn at once (memory only: same estimate).",
        ),
        ("--batch-size", 20, "N", "Sequences scored at once (memory only)."),
    ):
        estimate.add_argument(
            flag,
            type=number_flag(COUNT),
            default=default,
            metavar=metavar,
            help=f"{about} Default: {default}.",
        )
    estimate.add_argument(
        "--seed",
        type=number_flag(SEED),
        default=0,
        metavar="N",
        help="Seeds the samples. Default: 0.",
    )
    run = parser.add_argument_group("run", "on what it runs, and what it shows")
    run.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help='"auto" (CUDA when torch sees a GPU, else the CPU), "cpu" or "cuda". '
        "Default: auto.",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Show a progress bar over the batches. Default: on when stderr is a "
        "terminal.",
    )
    add_debug_flag(run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dmm_helpers.evaluate`` (exit statuses: :mod:`dmm_helpers.cli`)."""
    args = build_parser().parse_args(argv)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with errors_reported(args.debug):
        device = resolve_device(args.device)
        torch.manual_seed(args.seed)
        model = load_model(args.checkpoint, device)
        sequences = load_data(args.data)[args.split]
        if not sequences:
            raise ValueError(
                f"the {args.split} split of --data {args.data} holds no sequences"
            )
        # A model that gives NaN should say so below, not fail inside a
        # distribution's argument check.
        with pyro.validation_enabled(False):
            result = evaluate(
                model,
                sequences,
                args.samples,
                chunk_size=args.chunk_size,
                batch_size=args.batch_size,
                progress=progress,
            )
        diverged = [
            f"{key} {result[key]}"
            for key in ("bound_per_step", "nll_per_step")
            if not math.isfinite(result[key])
        ]
        if diverged:
            raise ValueError(
                f"the model in {args.checkpoint} gives non-finite estimates on the "
                f"{args.split} split ({', '.join(diverged)}): its weights diverged"
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
