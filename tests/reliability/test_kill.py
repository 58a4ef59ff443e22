"""One kill -9 trial (kill.py) in the default suite: `semievol evolve` on a tiny random Llama,
killed with SIGKILL (the CLI, Prefect's server, every child) at a seeded point of generation, then
run again: it finishes, with no response lost or duplicated, the clean run's pseudo-labels and
predictions, no complete step run again, no temp file left and the run lock free.

    pytest -q tests/reliability/test_kill.py    # a clean run in process, then the command twice (two
                                                # Prefect server starts): ~1 min on 2 idle cores

`bench/reliability.py --kill-trials 10` runs ten trials over every phase of a run.
"""

from __future__ import annotations

from kill import Setup, clean_run, kill_trial


def test_a_run_killed_during_generation_finishes_as_if_never_killed(tiny_model_dir, tmp_path):
    setup = Setup.make(tmp_path, tiny_model_dir)
    clean = clean_run(setup)
    trial = kill_trial(setup, clean, tmp_path / "trial", "generation", seed=0)
    assert trial.survived, "\n".join(trial.problems)
    # killed mid-run: warm training had finished (and was not run again), final training had not
    assert "train-warm" not in trial.rerun_steps and "train-final" in trial.rerun_steps
    assert trial.lost_rows == trial.duplicated_rows == 0 and trial.tables_equal and trial.lock_free
