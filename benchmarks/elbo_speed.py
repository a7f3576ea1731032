"""Time one training step: Pyro's SVI with Trace_ELBO against the fast ELBO.

Both sides train the same DMM (same sizes, same initial weights, one copy
each) on the same JSB mini-batch:

- pyro: ``SVI(dmm.model, dmm.guide, ClippedAdam, Trace_ELBO()).step(batch)``
- fast: ``-dmm_helpers.elbo.elbo(dmm, batch)`` backward, gradient-norm
  clipping, ``torch.optim.Adam`` step.

The steps alternate (pyro, fast, pyro, fast, ...) after a warm-up, so a
change in machine load hits both; the script prints both medians and their
ratio. Set the thread count from outside, e.g.

    OMP_NUM_THREADS=1 DMM_JSB_PATH=/path/to/jsb-chorales-quarter.json \\
        python benchmarks/elbo_speed.py --batch-size 20 --reps 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from dmm_helpers.data import load_jsb, make_batch
from dmm_helpers.dmm import DMM, DMMConfig
from dmm_helpers.elbo import elbo

LEARNING_RATE = 3e-4  # Pyro's DMM example
CLIP_NORM = 10.0  # Pyro's DMM example


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch-size", type=int, default=20, help="sequences per mini-batch"
    )
    parser.add_argument("--reps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps of each kind first"
    )
    parser.add_argument(
        "--num-iafs", type=int, default=0, help="IAF flows in the guide"
    )
    parser.add_argument(
        "--annealing-factor", type=float, default=1.0, help="KL weight beta"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="weights and choice of sequences"
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="keep Pyro's and torch's argument validation on (default: off, for speed)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.batch_size < 1 or args.reps < 1 or args.warmup < 0:
        raise SystemExit("--batch-size and --reps must be >= 1, --warmup >= 0")
    pyro.enable_validation(args.validate)
    pyro.set_rng_seed(args.seed)

    train = load_jsb()["train"]
    if args.batch_size > len(train):
        raise SystemExit(
            f"--batch-size {args.batch_size} exceeds the {len(train)} sequences"
        )
    generator = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(len(train), generator=generator)[: args.batch_size].tolist()
    batch = make_batch([train[i] for i in chosen])

    fast_dmm = DMM(DMMConfig(num_iafs=args.num_iafs))
    pyro_dmm = copy.deepcopy(fast_dmm)

    pyro.clear_param_store()
    svi = SVI(
        pyro_dmm.model,
        pyro_dmm.guide,
        ClippedAdam({"lr": LEARNING_RATE, "clip_norm": CLIP_NORM}),
        Trace_ELBO(max_plate_nesting=1),
    )
    optimizer = torch.optim.Adam(fast_dmm.parameters(), lr=LEARNING_RATE)

    def pyro_step() -> float:
        return svi.step(batch, args.annealing_factor)

    def fast_step() -> float:
        optimizer.zero_grad()
        loss = -elbo(fast_dmm, batch, args.annealing_factor)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fast_dmm.parameters(), CLIP_NORM)
        optimizer.step()
        return loss.item()

    for _ in range(args.warmup):
        pyro_step()
        fast_step()
    times: dict[str, list[float]] = {"pyro": [], "fast": []}
    for _ in range(args.reps):
        for name, step in (("pyro", pyro_step), ("fast", fast_step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    pyro_median = statistics.median(times["pyro"])
    fast_median = statistics.median(times["fast"])
    lengths = batch.lengths
    validation = "on" if args.validate else "off"
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s), validation {validation}"
    )
    print(
        f"batch of {len(lengths)} JSB training sequences, lengths "
        f"{int(lengths.min())}..{int(lengths.max())} ({int(lengths.sum())} steps); "
        f"DMM {fast_dmm.config.to_dict()}"
    )
    print(f"{args.reps} interleaved steps each after {args.warmup} warm-up steps")
    print(f"Pyro SVI + Trace_ELBO step: median {1000 * pyro_median:8.1f} ms")
    print(f"fast ELBO + Adam step:      median {1000 * fast_median:8.1f} ms")
    print(f"ratio (pyro / fast): {pyro_median / fast_median:.2f}x")


if __name__ == "__main__":
    main()
