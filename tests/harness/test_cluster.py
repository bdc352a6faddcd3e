"""Before a SLURM sweep submits: sbatch must exist; while it polls: one line about missing accounting."""

import logging

from earlyexit.harness.cluster import launcher_problem, quiet_submitit


def test_a_slurm_launcher_without_sbatch_is_refused_naming_what_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    problem = launcher_problem(["run.py", "-m", "hydra/launcher=slurm", "mode=dssd"])
    assert "hydra/launcher=slurm needs SLURM's sbatch" in problem and "slurm_local.sh up" in problem
    assert launcher_problem(["run.py", "-m", "mode=dssd"]) is None  # no SLURM asked for


def test_repeated_sacct_warnings_become_one_line(caplog):
    quiet = quiet_submitit()
    assert quiet_submitit() is quiet  # installed once
    quiet.seen = 0
    submitit = logging.getLogger("submitit")
    with caplog.at_level(logging.INFO):
        for call in range(1, 6):
            submitit.warning(f"Call #{call} - Bypassing sacct error boom, status may be inaccurate.")
        submitit.warning("a different warning")
    text = caplog.text
    assert "Bypassing sacct error" not in text and text.count("sacct fails on this cluster") == 1
    assert "a different warning" in text
