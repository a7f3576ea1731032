"""Tests of :mod:`dmm_helpers.evaluate`: the bound and the importance-sampled NLL.

Three kinds of checks:

- identities that hold draw by draw: with one sample the importance-sampled
  log-likelihood *is* the single-sample ELBO, and the log-mean-exp of a set of
  log-weights is never below their mean (Jensen), whatever the draws;
- the bookkeeping of chunks and batches, exactly, with log-weights that are
  fixed numbers (a stand-in for ``elbo_terms`` hands them out in order), so
  any chunk and batch size must reproduce one log-mean-exp over all of them;
- the estimate against the truth: for :class:`~dmm_helpers.dmm.LinearGaussianDMM`
  (a linear Gaussian state space model with the DMM's guide) the Kalman filter
  of :mod:`dmm_helpers.lgssm` gives ``log p(x)`` exactly, and the
  importance-sampled estimate must agree within its Monte Carlo error.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dmm_helpers import evaluate as evaluate_module
from dmm_helpers import lgssm, train
from dmm_helpers.checkpoint import load_model
from dmm_helpers.data import load_data, make_batch
from dmm_helpers.dmm import DMM, DMMConfig, LinearGaussianDMM
from dmm_helpers.elbo import ELBOTerms, elbo, elbo_terms
from dmm_helpers.evaluate import (
    Evaluation,
    evaluate,
    importance_sampled_log_likelihood,
    importance_weights,
)

TINY = DMMConfig(z_dim=4, emission_dim=8, transition_dim=8, rnn_dim=16)
# Monte Carlo agreement: allowed deviation in standard errors, plus a floor
# for the O(1/K) bias of a log-mean-exp and float rounding.
NUM_STANDARD_ERRORS = 4.0
MC_FLOOR = 1e-3


def random_rolls(lengths: list[int], seed: int) -> list[torch.Tensor]:
    """Piano rolls ``(T, 88)`` with about 8 notes sounding per step."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(T, 88, generator=generator) < 0.1).float() for T in lengths]


@pytest.fixture
def model() -> DMM:
    torch.manual_seed(0)
    return DMM(TINY)


@pytest.fixture
def sequences() -> list[torch.Tensor]:
    return random_rolls([5, 3, 7, 1, 4], seed=1)


# ----------------------------------------------------------------------------
# Identities that hold for every draw
# ----------------------------------------------------------------------------


def test_with_one_sample_the_nll_is_the_bound(model, sequences):
    torch.manual_seed(2)
    result = importance_sampled_log_likelihood(model, sequences, 1, batch_size=2)
    assert torch.equal(result.log_likelihood, result.elbo)
    assert result.lengths.tolist() == [5, 3, 7, 1, 4]
    summary = evaluate(model, sequences, 1)
    assert summary["nll_per_step"] == pytest.approx(
        summary["bound_per_step"], rel=1e-12
    )


def test_one_sample_is_the_sampled_kl_elbo_of_the_same_draw(model, sequences):
    """``log w`` is ``log p(x | z) - (log q(z | x) - log p(z))`` at the guide's draw."""
    torch.manual_seed(3)
    result = importance_sampled_log_likelihood(
        model, sequences, 1, batch_size=len(sequences)
    )
    torch.manual_seed(3)
    with torch.no_grad():
        model.eval()
        expected = elbo(model, make_batch(sequences), kl_estimator="sampled")
    assert float(result.elbo.sum()) == pytest.approx(float(expected), rel=1e-6)


def test_log_mean_exp_is_never_below_the_mean_of_the_same_weights(model, sequences):
    torch.manual_seed(4)
    result = importance_sampled_log_likelihood(
        model, sequences, 20, chunk_size=7, batch_size=2
    )
    assert (result.log_likelihood >= result.elbo).all()
    assert (result.log_likelihood > result.elbo + 1e-3).all()  # the weights do vary
    summary = evaluate(model, sequences, 20, chunk_size=7)
    assert summary["nll_per_step"] < summary["bound_per_step"]


def test_the_nll_is_below_the_analytic_bound_on_average(model, sequences):
    """Independent draws: the importance-sampled NLL against ``train.evaluate_bound``
    (analytic KL).
    """
    torch.manual_seed(5)
    nll = evaluate(model, sequences, 50)["nll_per_step"]
    bounds = torch.tensor([train.evaluate_bound(model, sequences) for _ in range(20)])
    standard_error = float(bounds.std()) / math.sqrt(len(bounds))
    assert nll < float(bounds.mean()) - NUM_STANDARD_ERRORS * standard_error


def test_the_model_is_evaluated_in_eval_mode_and_its_mode_restored(
    model, sequences, monkeypatch
):
    seen = []
    real = evaluate_module.elbo_terms
    monkeypatch.setattr(
        evaluate_module,
        "elbo_terms",
        lambda m, b, *a, **k: seen.append(m.training) or real(m, b, *a, **k),
    )
    model.train()
    importance_sampled_log_likelihood(model, sequences, 3)
    assert seen and not any(seen) and model.training


def test_summary_counts_sequences_time_steps_and_samples(model, sequences):
    torch.manual_seed(6)
    summary = evaluate(model, sequences, 4, chunk_size=3, batch_size=2)
    assert summary.keys() == {
        "bound_per_step",
        "reconstruction_per_step",
        "kl_per_step",
        "nll_per_step",
        "sequences",
        "time_steps",
        "samples",
    }
    assert (summary["sequences"], summary["time_steps"], summary["samples"]) == (
        5,
        20,
        4,
    )
    torch.manual_seed(6)
    result = importance_sampled_log_likelihood(
        model, sequences, 4, chunk_size=3, batch_size=2
    )
    assert summary["bound_per_step"] == pytest.approx(
        -float(result.elbo.sum()) / 20, rel=1e-12
    )
    assert summary["nll_per_step"] == pytest.approx(
        -float(result.log_likelihood.sum()) / 20, rel=1e-12
    )


# ----------------------------------------------------------------------------
# Chunks and batches: exact bookkeeping with fixed log-weights
# ----------------------------------------------------------------------------


NUM_SAMPLES = 23


@pytest.fixture
def fixed_log_weights(monkeypatch) -> torch.Tensor:
    """Replace ``elbo_terms`` by a dealer of fixed log-weights; returns the table
    ``(sequence, K)``.

    Sequence ``i`` is recognised by the note it plays first (key ``i``). Its
    ``k``-th draw, in the order draws are asked for, gets ``table[i, k]``.
    The values span 60 nats, so a log-sum-exp that is not stabilised overflows.
    """
    generator = torch.Generator().manual_seed(7)
    table = -400.0 + 60.0 * torch.rand(
        6, NUM_SAMPLES, generator=generator, dtype=torch.float64
    )
    dealt = [0] * len(table)

    def deal(model, batch, kl_estimator="analytic", noise=None, h=None, check=True):
        # log w needs log q - log p at the draw, not the analytic KL
        assert kl_estimator == "sampled"
        log_w = []
        for tag in batch.x[:, 0].argmax(-1).tolist():
            log_w.append(table[tag, dealt[tag]])
            dealt[tag] += 1
        log_w = torch.stack(log_w)
        zeros = torch.zeros_like(log_w)
        return ELBOTerms(log_w, zeros, None, log_w[:, None], zeros[:, None])

    monkeypatch.setattr(evaluate_module, "elbo_terms", deal)
    return table


@pytest.mark.parametrize("chunk_size", [4, 23])
def test_the_reconstruction_term_is_averaged_over_the_same_draws(
    fixed_log_weights, monkeypatch, chunk_size
):
    # Each draw's log p(x | z) is the dealt value and its KL a quarter of it,
    # so log w = 0.75 * value: the two averages must come from the same draws.
    table = fixed_log_weights
    dealer = evaluate_module.elbo_terms
    monkeypatch.setattr(
        evaluate_module,
        "elbo_terms",
        lambda *a, **k: (lambda t: t._replace(kl=0.25 * t.log_lik))(dealer(*a, **k)),
    )
    sequences = [torch.zeros(3, 88, dtype=torch.float64) for _ in range(6)]
    for tag, roll in enumerate(sequences):
        roll[0, tag] = 1.0
    result = importance_sampled_log_likelihood(
        DMM(TINY).double(), sequences, NUM_SAMPLES, chunk_size=chunk_size
    )
    assert result.reconstruction.tolist() == pytest.approx(
        table.mean(1).tolist(), rel=1e-13
    )
    assert result.elbo.tolist() == pytest.approx(
        (0.75 * table).mean(1).tolist(), rel=1e-13
    )


@pytest.mark.parametrize("chunk_size", [1, 4, 22, 23, 100])
@pytest.mark.parametrize("batch_size", [1, 4, 6])
def test_chunks_and_batches_combine_to_one_log_mean_exp(
    fixed_log_weights, chunk_size, batch_size
):
    table = fixed_log_weights
    sequences = [torch.zeros(2 + i % 3, 88, dtype=torch.float64) for i in range(6)]
    for tag, roll in enumerate(sequences):
        roll[0, tag] = 1.0
    model = DMM(TINY).double()
    result = importance_sampled_log_likelihood(
        model, sequences, NUM_SAMPLES, chunk_size=chunk_size, batch_size=batch_size
    )
    rows = table.tolist()
    expected_ll = []
    for row in rows:  # log (1/K) sum_k exp(a_k), by hand, stabilised at the maximum
        top = max(row)
        expected_ll.append(
            top + math.log(sum(math.exp(a - top) for a in row) / len(row))
        )
    expected_elbo = [sum(row) / len(row) for row in rows]
    assert result.log_likelihood.tolist() == pytest.approx(expected_ll, rel=1e-13)
    assert result.elbo.tolist() == pytest.approx(expected_elbo, rel=1e-13)
    assert result.lengths.tolist() == [2, 3, 4, 2, 3, 4]


def test_the_same_draws_give_the_same_answer_whatever_the_chunk_size_above_k(
    model, sequences
):
    answers = []
    for chunk_size in (10, 11, 1000):
        torch.manual_seed(8)
        answers.append(
            importance_sampled_log_likelihood(
                model, sequences, 10, chunk_size=chunk_size
            )
        )
    for other in answers[1:]:
        assert torch.equal(other.log_likelihood, answers[0].log_likelihood)
        assert torch.equal(other.elbo, answers[0].elbo)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_importance_weights_are_sampled_elbos_of_copies(model, sequences, chunk_size):
    # The backward RNN is read once and its output repeated for the copies; the
    # weights must be exactly those of elbo_terms on the copies themselves,
    # drawn in the same order (copy-major, a chunk at a time).
    model = model.double().eval()
    batch = make_batch([s.double() for s in sequences[:3]])
    torch.manual_seed(5)
    weights = importance_weights(model, batch, 8, chunk_size=chunk_size)
    assert weights.log_weight.shape == weights.log_lik.shape == (8, 3)
    torch.manual_seed(5)
    expected, expected_lik = [], []
    for done in range(0, 8, chunk_size):
        copies = min(chunk_size, 8 - done)
        with torch.no_grad():
            terms = elbo_terms(
                model,
                make_batch([s.double() for s in sequences[:3]] * copies),
                "sampled",
            )
        expected.append((terms.log_lik - terms.kl).view(copies, 3))
        expected_lik.append(terms.log_lik.view(copies, 3))
    assert torch.allclose(weights.log_weight, torch.cat(expected), rtol=1e-12)
    assert torch.allclose(weights.log_lik, torch.cat(expected_lik), rtol=1e-12)


def test_per_step_divides_sums_by_time_steps():
    result = Evaluation(
        log_likelihood=torch.tensor([-10.0, -20.0]),
        elbo=torch.tensor([-12.0, -23.0]),
        lengths=torch.tensor([2, 3]),
        reconstruction=torch.tensor([-8.0, -15.0]),
    ).per_step()
    assert result == pytest.approx(
        {
            "bound": 35 / 5,
            "reconstruction": 23 / 5,
            "kl": 12 / 5,
            "nll": 30 / 5,
            "sequences": 2,
            "time_steps": 5,
        }
    )
    assert result["bound"] == pytest.approx(result["reconstruction"] + result["kl"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_samples": 0}, "num_samples must be a positive int, got 0"),
        ({"num_samples": -3}, "num_samples must be a positive int, got -3"),
        ({"num_samples": 2.5}, "num_samples must be a positive int, got 2.5"),
        ({"num_samples": True}, "num_samples must be a positive int, got True"),
        ({"chunk_size": 0}, "chunk_size must be a positive int, got 0"),
        ({"chunk_size": 1.5}, "chunk_size must be a positive int, got 1.5"),
        ({"batch_size": -1}, "batch_size must be a positive int, got -1"),
        ({"sequences": []}, "no sequences to evaluate"),
    ],
)
def test_bad_arguments_are_named(model, sequences, arguments, message):
    call = {"sequences": sequences, "num_samples": 3, **arguments}
    with pytest.raises(ValueError, match=message):
        importance_sampled_log_likelihood(model, **call)
    with pytest.raises(ValueError, match=message):
        evaluate(model, **call)


def test_sequences_of_another_width_are_refused(model):
    with pytest.raises(ValueError, match="88"):
        importance_sampled_log_likelihood(model, [torch.zeros(3, 12)], 2)


# ----------------------------------------------------------------------------
# Against the exact log-likelihood of a linear Gaussian state space model
# ----------------------------------------------------------------------------


def fitted_linear_gaussian_dmm() -> tuple[LinearGaussianDMM, list[torch.Tensor]]:
    """An LGSSM with 88-dimensional observations, three sequences drawn from it, and a
    fitted guide.

    The guide (backward RNN and combiner; the generative half is fixed) is
    fitted to the three sequences by Adam on the ELBO, eight draws per step,
    so that the importance weights are far from degenerate.
    """
    dtype = torch.float64
    generator = torch.Generator().manual_seed(1)
    A = torch.tensor([[0.8, 0.2], [-0.1, 0.7]], dtype=dtype)
    C = 0.2 * torch.randn(88, 2, generator=generator, dtype=dtype)
    q_scale = torch.tensor([0.7, 0.5], dtype=dtype)
    r_scale = torch.ones(88, dtype=dtype)
    z_0 = torch.tensor([0.5, -0.5], dtype=dtype)
    torch.manual_seed(0)
    model = LinearGaussianDMM(A, C, q_scale, r_scale, z_0, rnn_dim=16)
    draws = lgssm.sample(
        **model.lgssm_params(), num_steps=5, num_sequences=3, generator=generator
    )
    sequences = [draws.x[i, :length] for i, length in enumerate([3, 5, 4])]

    batch = make_batch(sequences * 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = 200
    for step in range(steps):
        if step == steps // 2:
            optimizer.param_groups[0]["lr"] = 2e-3
        optimizer.zero_grad()
        (-elbo(model, batch)).backward()
        optimizer.step()
    return model, sequences


def test_importance_sampling_recovers_the_exact_linear_gaussian_log_likelihood():
    model, sequences = fitted_linear_gaussian_dmm()
    batch = make_batch(sequences)
    with torch.no_grad():
        exact = lgssm.log_likelihood(
            batch.x, **model.lgssm_params(), mask=batch.mask.bool()
        )  # (3,)

    # Independent runs, each a log-mean-exp of K weights; their spread is the
    # Monte Carlo error of one run. A chunk size that does not divide K and
    # two batches exercise every path of the bookkeeping.
    torch.manual_seed(9)
    runs, num_samples = 8, 1000
    results = [
        importance_sampled_log_likelihood(
            model, sequences, num_samples, chunk_size=300, batch_size=2
        )
        for _ in range(runs)
    ]
    estimates = torch.stack([r.log_likelihood for r in results])  # (runs, 3)
    elbos = torch.stack([r.elbo for r in results])  # (runs, 3)
    standard_error = estimates.std(0) / math.sqrt(runs)
    error = estimates.mean(0) - exact
    assert (error.abs() <= NUM_STANDARD_ERRORS * standard_error + MC_FLOOR).all(), (
        error,
        standard_error,
    )

    # The ELBO is below log p(x) by the guide's gap, which importance sampling closes.
    gap = exact - elbos.mean(0)
    elbo_error = elbos.std(0) / math.sqrt(runs)
    assert (gap > NUM_STANDARD_ERRORS * elbo_error).all(), (gap, elbo_error)
    assert (error.abs() < gap / 5).all(), (error, gap)
    # The check has teeth: the per-run spread is small against the numbers compared.
    assert (estimates.std(0) < 0.05).all(), estimates.std(0)


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------


def test_command_line_prints_one_json_object(tmp_path):
    def notes(rolls: list[torch.Tensor]) -> list[list[list[int]]]:
        return [
            [[21 + key for key in step.nonzero().flatten().tolist()] for step in roll]
            for roll in rolls
        ]

    data = {
        "train": notes(random_rolls([4, 6, 3, 5], seed=10)),
        "valid": notes(random_rolls([5, 2, 7], seed=11)),
        "test": notes(random_rolls([3], seed=12)),
    }
    data_path = tmp_path / "tiny.json"
    data_path.write_text(json.dumps(data))
    out = tmp_path / "run"
    train.main(
        [
            "--data",
            str(data_path),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--eval-every",
            "1",
            "--batch-size",
            "2",
            "--z-dim",
            "4",
            "--emission-dim",
            "8",
            "--transition-dim",
            "8",
            "--rnn-dim",
            "16",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    checkpoint = out / "best.pt"
    arguments = [
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data_path),
        "--split",
        "valid",
        "--samples",
        "7",
        "--chunk-size",
        "3",
        "--seed",
        "11",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dmm_helpers.evaluate", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    printed = json.loads(line)
    assert printed.keys() == {
        "checkpoint",
        "data",
        "split",
        "device",
        "seed",
        "bound_per_step",
        "reconstruction_per_step",
        "kl_per_step",
        "nll_per_step",
        "sequences",
        "time_steps",
        "samples",
    }
    assert (printed["checkpoint"], printed["data"]) == (str(checkpoint), str(data_path))
    assert (printed["split"], printed["device"]) == ("valid", "cpu")
    assert (printed["seed"], printed["samples"]) == (11, 7)
    assert (printed["sequences"], printed["time_steps"]) == (3, 5 + 2 + 7)
    assert printed["nll_per_step"] < printed["bound_per_step"]
    assert printed["bound_per_step"] == pytest.approx(
        printed["reconstruction_per_step"] + printed["kl_per_step"]
    )

    # The same numbers in process: same model, split, seed and chunks.
    torch.manual_seed(11)
    model = load_model(checkpoint)
    expected = evaluate(model, load_data(str(data_path))["valid"], 7, chunk_size=3)
    for key in ("bound_per_step", "nll_per_step"):
        assert printed[key] == pytest.approx(expected[key], rel=1e-6)


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    """One line and exit 1 for a bad file, a usage error (exit 2) for a bad flag.

    tests/test_errors.py tries every other bad input of the command.
    """
    with pytest.raises(SystemExit) as stop:
        evaluate_module.main(
            ["--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu"]
        )
    assert stop.value.code == 1
    assert capsys.readouterr().err == f"error: no checkpoint at {tmp_path}/missing.pt\n"
    with pytest.raises(SystemExit) as stop:
        evaluate_module.main(["--checkpoint", "x.pt", "--split", "training"])
    assert stop.value.code == 2
    assert "invalid choice: 'training'" in capsys.readouterr().err
