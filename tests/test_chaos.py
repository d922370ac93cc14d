"""Chaos in CI: training killed at random moments and rerun ends as if never interrupted.

The short version of benchmarks/chaos.py (whose 100-injection figure is in
docs/reliability.md): one workdir, four kills (SIGKILL and SIGTERM) at seeded random moments,
then the same command until it exits 0. Every step must be logged once in metrics.jsonl with
the uninterrupted run's loss bit for bit.
"""

from __future__ import annotations

import random
import sys
import time

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import chaos

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_training_killed_at_random_moments_logs_what_a_clean_run_logs(small_corpus, tmp_path):
    clean = tmp_path / "clean"
    t0 = time.perf_counter()
    assert chaos.run_to_end(chaos.train_command(small_corpus, clean), tmp_path / "clean.log") == 0
    seconds = time.perf_counter() - t0  # kills land within a run's length on this machine
    reference = chaos.train_lines(clean)
    assert [r["step"] for r in reference] == list(range(1, chaos.STEPS + 1))
    workdir = tmp_path / "chaos"
    trial = chaos.chaos_trial(
        chaos.train_command(small_corpus, workdir),
        workdir,
        reference,
        random.Random(1),
        injections=4,
        window=(0.1 * seconds, 0.8 * seconds),
    )
    log = (tmp_path / "chaos.log").read_text()[-3000:]
    assert not trial.problems, (trial, log)
    assert len(trial.kills) >= 2, trial  # (a resumed run is shorter: a late kill may miss it)
