"""The data-parallel E-step on 2 processes (torchrun, gloo on this machine's CPU): the log density,
its gradient and the whitening summed over the shards equal those of all rows in one process, both
processes draw the same chain, and an EStep on the shards draws what one on all rows draws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.torchrun import run_workers

@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded_estep")
    run_workers(Path(__file__).with_name("estep_worker.py"), [str(out)], processes=2)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_each_process_holds_half_of_the_rows(ranks):
    assert [r["rows"] for r in ranks] == [1000, 1000]


def test_sharded_log_density_and_gradient_equal_all_rows_in_one_process(ranks):
    for r in ranks:
        assert r["sharded_value"] == pytest.approx(r["value"], rel=1e-5)
        for sharded, whole in zip(r["sharded_gradient"], r["gradient"]):
            np.testing.assert_allclose(sharded, whole, rtol=1e-4, atol=1e-4)


def test_sharded_whitening_equals_all_rows_in_one_process(ranks):
    for r in ranks:
        for sharded, whole in zip(r["sharded_chol"], r["chol"]):
            np.testing.assert_allclose(sharded, whole, rtol=1e-4, atol=1e-5)


def test_both_processes_draw_the_same_chain(ranks):
    assert ranks[0]["draws"] == ranks[1]["draws"]
    assert np.std(np.array(ranks[0]["draws"][1][0])) > 0  # the chain moved


def test_a_sharded_estep_draws_what_one_process_draws_on_all_rows(ranks):
    """Posterior means of the 50 effects from 24 draws each: the same in both processes, and within
    Monte Carlo noise of a one-process E-step on all rows (correlation above .9, where the means spread
    over levels ~2x more than a mean's noise)."""
    assert ranks[0]["sharded_means"] == ranks[1]["sharded_means"]
    sharded = np.concatenate(ranks[0]["sharded_means"])
    whole = np.concatenate(ranks[0]["whole_means"])
    assert np.corrcoef(sharded, whole)[0, 1] > 0.9
    assert np.abs(sharded - whole).mean() < 0.15


def test_shards_of_unequal_size_are_padded_and_draw_the_same(ranks):
    """Shards of 1,100 and 900 rows (the smaller padded with weight-0 rows): the same draws in both
    processes, within Monte Carlo noise of one process on all rows."""
    assert ranks[0]["uneven_means"] == ranks[1]["uneven_means"]
    uneven = np.concatenate(ranks[0]["uneven_means"])
    whole = np.concatenate(ranks[0]["whole_means"])
    assert np.corrcoef(uneven, whole)[0, 1] > 0.9
    assert np.abs(uneven - whole).mean() < 0.15


def test_sharded_rank_one_whitening_equals_all_rows_in_one_process(ranks):
    """More classes than the dense whitening takes: the per-level sums of the rank-one whitening,
    summed over the shards, give the whitening of all rows in one process."""
    for r in ranks:
        assert r["rank_one"]["kind"] == r["sharded_rank_one"]["kind"] == "RankOneWhitening"
        for name in ("scale", "direction", "gain"):
            for sharded, whole in zip(r["sharded_rank_one"][name], r["rank_one"][name], strict=True):
                np.testing.assert_allclose(sharded, whole, rtol=1e-4, atol=1e-6)
