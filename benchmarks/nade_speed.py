"""Time the NADE emission's scoring: every prefix's hidden state against the chord's.

Both sides compute the 88 conditional logits ``logit p(x_k = 1 | x_{<k}, z_t)``
of every step of the same JSB mini-batch, forward and backward, from the same
biases and weights:

- dense: the hidden pre-activation of every key ``k``, ``c + sum_{j<k} W_j x_j``,
  as one cumulative sum over an ``(N, H, 88)`` tensor, then ``H x 88``
  sigmoids per step (how chapter 09 first wrote it);
- chord: :meth:`dmm_helpers.nade.NADEBernoulli.conditional_logits`, which
  forms one hidden state per sounding key (``m + 1`` for a chord of ``m``
  notes) and reads each key's from them.

The script first checks that the two agree, then alternates the timed passes
(dense, chord, dense, ...) after a warm-up, so a change in machine load hits
both, and prints both medians and their ratio. Set the thread count from
outside, e.g.

    OMP_NUM_THREADS=1 DMM_JSB_PATH=/path/to/jsb-chorales-quarter.json \\
        python benchmarks/nade_speed.py --batch-size 20 --hidden 200 --reps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmm_helpers.data import load_jsb, make_batch
from dmm_helpers.nade import NADEBernoulli


def dense_logits(nade: NADEBernoulli, x: torch.Tensor) -> torch.Tensor:
    """The conditional logits from every prefix's hidden state: ``(N, D)``."""
    steps = x.unsqueeze(-2) * nade.weight_in  # (N, H, D): W[:, j] x_j
    before = torch.cumsum(steps, dim=-1) - steps  # (N, H, D): sums over j < k
    hidden = torch.sigmoid(nade.hidden_bias.unsqueeze(-1) + before)  # (N, H, D)
    return nade.visible_bias + (hidden * nade.weight_out.T).sum(-2)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch-size", type=int, default=20, help="chorales per mini-batch"
    )
    parser.add_argument(
        "--hidden", type=int, default=200, help="NADE hidden units H (authors': 200)"
    )
    parser.add_argument("--reps", type=int, default=20, help="timed passes of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes first")
    parser.add_argument("--seed", type=int, default=0, help="weights and chorales")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    chorales = load_jsb()["train"]
    chosen = torch.randperm(len(chorales))[: args.batch_size].tolist()
    batch = make_batch([chorales[i] for i in chosen])
    x = batch.x[batch.mask.bool()]  # (N, 88): the real steps
    notes, units = x.shape[-1], args.hidden
    parameters = [
        torch.randn(len(x), notes, requires_grad=True),  # b, one per step
        torch.randn(len(x), units, requires_grad=True),  # c, one per step
        (torch.randn(units, notes) / units**0.5).requires_grad_(),  # W
        (torch.randn(notes, units) / units**0.5).requires_grad_(),  # V
    ]
    nade = NADEBernoulli(*parameters)
    with torch.no_grad():
        difference = (dense_logits(nade, x) - nade.conditional_logits(x)).abs().max()
    assert difference.item() < 1e-4, difference.item()
    sides = {
        "dense": lambda: dense_logits(nade, x),
        "chord": lambda: nade.conditional_logits(x),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.warmup + args.reps):
        for name, logits in sides.items():
            start = time.perf_counter()
            logits().sum().backward()
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)
            for parameter in parameters:
                parameter.grad = None
    medians = {name: statistics.median(t) for name, t in times.items()}
    largest = int(x.sum(-1).max())
    print(
        f"{len(x)} steps of {args.batch_size} chorales, H = {units}, largest chord "
        f"{largest} notes, {torch.get_num_threads()} thread(s), {args.reps} passes"
    )
    for name, median in medians.items():
        print(f"{name:>5}: median {1000 * median:.1f} ms per forward and backward")
    print(f"dense / chord: {medians['dense'] / medians['chord']:.1f}x")


if __name__ == "__main__":
    main()
