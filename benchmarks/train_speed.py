"""Time a training epoch on JSB: the project's training step against Pyro's SVI.

Every contender trains its own copy of one DMM (same sizes, same initial
weights) on the JSB training set, in the same mini-batches in the same order
(``Trainer``'s: ``minibatches`` seeded by the seed and the epoch), with the
same KL annealing factor at every step and the same optimiser settings
(``ClippedAdam`` with the defaults of ``TrainConfig``, which are Pyro's DMM
example's):

- project: ``Trainer.train_step``, the step ``python -m dmm_helpers.train``
  takes: the vectorised ELBO of ``dmm_helpers.elbo`` (analytic KL), backward,
  the non-finite guard, ``ClippedAdam``;
- pyro: ``SVI(dmm.model, dmm.guide, pyro.optim.ClippedAdam, Trace_ELBO()).step``;
- with ``--mean-field``, also ``TraceMeanField_ELBO`` (Pyro's analytic-KL
  objective, the one the project's ELBO equals on the same draws).

By default all start from the weights of the shipped model with the same
number of flows and continue its schedule (its epochs, batch order and
annealing factor), the regime in which a long run spends nearly all its time;
``--start random`` starts from fresh weights instead (there, early steps can
give enormous or non-finite losses; Pyro's SVI has no guard against the latter,
so its weights may turn into NaN, and the script counts such steps).

The contenders alternate batch by batch, the order rotating every batch, so
a change in machine load hits all of them; an epoch's time is the sum of its
batch times. After a few untimed warm-up steps of each, the script prints the
median seconds per epoch and the ratio (target: project <= 0.4x Pyro's
Trace_ELBO). It then reads the shipped training logs (``pretrained/``) and
prints the training wall-clock and the epochs each shipped run took to reach a
test bound of 6.90 and 6.87 nats per time step.

Set the thread count from outside, e.g.

    OMP_NUM_THREADS=1 DMM_JSB_PATH=/path/to/jsb-chorales-quarter.json \\
        python benchmarks/train_speed.py --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import ClippedAdam

from dmm_helpers.checkpoint import load_checkpoint, load_weights
from dmm_helpers.data import Batch, minibatches
from dmm_helpers.dmm import DMMConfig
from dmm_helpers.pretrained import (
    best_record,
    first_reaching,
    manifest,
    pretrained_dir,
    training_hours,
    training_log,
)
from dmm_helpers.train import TrainConfig, Trainer, annealing_factor

# Test bounds (nats per time step) whose arrival time the shipped logs are
# searched for: a little above Pyro's tutorial, and Pyro's tutorial without a flow.
MILESTONES = (6.90, 6.87)
TARGET_RATIO = 0.4  # the project's epoch at most this fraction of Pyro's Trace_ELBO's
# Where --start shipped starts: the shipped runs with the default (Pyro) sizes.
SHIPPED_BY_FLOWS = {0: "jsb_dmm_pyro", 2: "jsb_dmm_iaf_pyro"}

Step = Callable[[Batch, float], "float | None"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs of each contender"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps of each contender first"
    )
    parser.add_argument(
        "--batch-size", type=int, default=20, help="sequences per mini-batch"
    )
    parser.add_argument(
        "--num-iafs", type=int, default=0, help="IAF flows in the guide"
    )
    parser.add_argument(
        "--data", default="jsb", help='"jsb", "bach" or a JSON/MIDI path'
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initial weights and batch order"
    )
    parser.add_argument(
        "--start",
        choices=("shipped", "random"),
        default="shipped",
        help="continue the shipped model with --num-iafs flows, "
        "or start from random weights",
    )
    parser.add_argument(
        "--mean-field", action="store_true", help="also time Pyro's TraceMeanField_ELBO"
    )
    parser.add_argument(
        "--no-shipped",
        action="store_true",
        help="skip the report on the shipped training logs",
    )
    args = parser.parse_args()
    if args.epochs < 1 or args.warmup < 0 or args.batch_size < 1 or args.num_iafs < 0:
        parser.error(
            "--epochs and --batch-size must be >= 1, --warmup and --num-iafs >= 0"
        )
    return args


def pyro_step(trainer: Trainer, loss: Trace_ELBO) -> Step:
    """An SVI step on a copy of the trainer's model as it is, with its optimiser."""
    dmm = copy.deepcopy(trainer.model)
    config = trainer.config
    optimizer = ClippedAdam(
        {
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "betas": (config.beta1, config.beta2),
            "clip_norm": config.clip_norm,
            "lrd": config.lr_decay,
            "weight_decay": config.weight_decay,
        }
    )
    svi = SVI(dmm.model, dmm.guide, optimizer, loss)
    # DMM.model and DMM.guide register their weights as "dmm" in Pyro's global
    # parameter store; each contender keeps its own store, or the copies would
    # share (and overwrite) each other's weights.
    store = pyro.get_param_store()
    own: dict[str, Any] = {"params": {}, "constraints": {}}

    def step(batch: Batch, beta: float) -> float:
        with store.scope(own):
            return svi.step(batch, beta)

    return step


def start_from_shipped(trainer: Trainer, num_iafs: int) -> int:
    """Load the shipped model with ``num_iafs`` flows into the trainer; its epoch."""
    name = SHIPPED_BY_FLOWS.get(num_iafs)
    if name is None:
        raise SystemExit(
            f"no shipped model has {num_iafs} flows (those with "
            f"{sorted(SHIPPED_BY_FLOWS)} do); use --start random"
        )
    path = pretrained_dir(name) / "model.pt"
    state = load_checkpoint(path)
    stored = DMMConfig.from_dict(state["model_config"])
    if stored != trainer.model.config:
        raise SystemExit(
            f"the shipped {name} is {stored}, not {trainer.model.config}; "
            "use --start random"
        )
    load_weights(trainer.model, state["model"], path)
    return int(state["epoch"])


def time_epochs(
    trainer: Trainer,
    contenders: dict[str, Step],
    epochs: int,
    warmup: int,
    first_epoch: int = 0,
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, int]]:
    """Time ``epochs`` epochs from ``first_epoch``, contenders alternating by batch.

    Returns each contender's seconds per epoch, its training loss per time
    step in the last epoch, and its number of non-finite losses.
    """
    config = trainer.config
    names = list(contenders)

    def batches(epoch: int) -> list[Batch]:
        seed = config.seed * 1_000_003 + epoch  # Trainer.run's order
        return list(
            minibatches(
                trainer.train_set, config.batch_size, seed=seed, device=trainer.device
            )
        )

    step = first_epoch * trainer.steps_per_epoch
    for batch in itertools.islice(itertools.cycle(batches(first_epoch)), warmup):
        for name in names:
            contenders[name](
                batch, annealing_factor(step, trainer.steps_per_epoch, config)
            )

    seconds: dict[str, list[float]] = {name: [] for name in names}
    loss_per_step: dict[str, float] = {}
    non_finite = dict.fromkeys(names, 0)
    for epoch in range(first_epoch, first_epoch + epochs):
        spent = dict.fromkeys(names, 0.0)
        loss_sum = dict.fromkeys(names, 0.0)
        time_steps = dict.fromkeys(names, 0)
        for index, batch in enumerate(batches(epoch)):
            beta = annealing_factor(step, trainer.steps_per_epoch, config)
            # Who goes first rotates, so that none always runs on a warm cache.
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                loss = contenders[name](batch, beta)
                spent[name] += time.perf_counter() - start
                if loss is not None and math.isfinite(loss):
                    loss_sum[name] += loss
                    time_steps[name] += int(batch.lengths.sum())
                else:
                    non_finite[name] += 1
            step += 1
        for name in names:
            seconds[name].append(spent[name])
            steps = time_steps[name]
            loss_per_step[name] = loss_sum[name] / steps if steps else math.nan
    return seconds, loss_per_step, non_finite


def report_shipped() -> None:
    """Training wall-clock and epochs to each milestone, from the shipped logs."""
    print(
        "\nshipped runs: training wall-clock (evaluations excluded) "
        "to reach a test bound"
    )
    try:
        names = sorted(manifest())
    except (OSError, ValueError) as error:
        print(f"  no shipped models readable: {error}")
        return
    for name in names:
        try:
            log = training_log(name)
        except Exception as error:  # a missing download or a changed file
            print(f"  {name}: log not available ({type(error).__name__}: {error})")
            continue
        try:
            best = best_record(log, "test_bound")
        except ValueError:
            print(f"  {name}: no evaluation in the log yet")
            continue
        last = log[-1]
        print(
            f"  {name}: log ends at epoch {last['epoch']} "
            f"({training_hours(last):.2f} h); best test bound "
            f"{best['test_bound']:.3f} at epoch {best['epoch']} "
            f"({training_hours(best):.2f} h)"
        )
        for bound in MILESTONES:
            hit = first_reaching(log, bound)
            if hit is None:
                print(f"    {bound:.2f}: not reached yet")
            else:
                print(
                    f"    {bound:.2f}: epoch {hit['epoch']}, "
                    f"{hit['elapsed_s']:.0f} s ({training_hours(hit):.2f} h) "
                    "of training"
                )


def main() -> None:
    args = parse_args()
    pyro.enable_validation(
        False
    )  # as Trainer.train_step: no argument checks in the hot loop
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=args.data,
            out=out,
            batch_size=args.batch_size,
            num_iafs=args.num_iafs,
            seed=args.seed,
            device="cpu",
            progress=False,
        )
        trainer = Trainer(config)
        first_epoch = (
            start_from_shipped(trainer, args.num_iafs) if args.start == "shipped" else 0
        )
        # The learning rate where the schedule stands (ClippedAdam decays it
        # every step).
        steps_taken = first_epoch * trainer.steps_per_epoch
        for group in trainer.optimizer.param_groups:
            group["lr"] = config.learning_rate * config.lr_decay**steps_taken
        # Copies of the model as it starts, before the project's step changes it.
        contenders: dict[str, Step] = {
            "pyro Trace_ELBO": pyro_step(trainer, Trace_ELBO(max_plate_nesting=1))
        }
        if args.mean_field:
            contenders["pyro TraceMeanField_ELBO"] = pyro_step(
                trainer, TraceMeanField_ELBO(max_plate_nesting=1)
            )
        contenders = {"project": trainer.train_step, **contenders}
        seconds, loss_per_step, non_finite = time_epochs(
            trainer, contenders, args.epochs, args.warmup, first_epoch
        )

    steps = sum(int(s.shape[0]) for s in trainer.train_set)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        "validation off"
    )
    print(
        f"data {args.data!r}: {len(trainer.train_set)} training sequences, "
        f"{steps} time steps, "
        f"{trainer.steps_per_epoch} mini-batches of up to {config.batch_size} per epoch"
    )
    print(f"DMM {trainer.model.config.to_dict()}")
    start = (
        f"the shipped {SHIPPED_BY_FLOWS[args.num_iafs]} (epoch {first_epoch}), "
        "continuing its schedule"
        if args.start == "shipped"
        else f"random weights (seed {args.seed}), epoch 0"
    )
    beta = annealing_factor(
        first_epoch * trainer.steps_per_epoch, trainer.steps_per_epoch, config
    )
    print(f"start: {start}; annealing factor {beta:.3f}")
    print(
        f"ClippedAdam lr {config.learning_rate} x {config.lr_decay}^step, "
        f"betas ({config.beta1}, {config.beta2}), clip {config.clip_norm} per entry, "
        f"weight decay {config.weight_decay}"
    )
    print(
        f"{args.epochs} timed epoch(s) of each, interleaved batch by batch, "
        f"after {args.warmup} warm-up step(s) of each"
    )
    width = max(len(name) for name in seconds)
    for name, times in seconds.items():
        listed = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"{name:<{width}}  median {statistics.median(times):7.2f} s/epoch  "
            f"({listed}); "
            f"last epoch's training loss {loss_per_step[name]:.3f} nats/step; "
            f"non-finite steps {non_finite[name]}"
        )
    project = statistics.median(seconds["project"])
    for name in seconds:
        if name != "project":
            ratio = project / statistics.median(seconds[name])
            verdict = "meets" if ratio <= TARGET_RATIO else "misses"
            print(
                f"ratio project / {name}: {ratio:.3f}x "
                f"({verdict} the target <= {TARGET_RATIO}x)"
            )
    if not args.no_shipped:
        report_shipped()


if __name__ == "__main__":
    main()
