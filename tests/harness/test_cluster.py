"""Before a SLURM sweep submits: sbatch must exist; while it polls: one line about missing accounting."""

import logging

from earlyexit.harness import cluster
from earlyexit.harness.cluster import launcher_problem, quiet_submitit


def test_a_slurm_launcher_without_sbatch_is_refused_naming_what_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    problem = launcher_problem(["run.py", "-m", "hydra/launcher=slurm", "mode=dssd"])
    assert "hydra/launcher=slurm needs SLURM's sbatch" in problem and "slurm_local.sh up" in problem
    assert launcher_problem(["run.py", "-m", "mode=dssd"]) is None  # no SLURM asked for


def test_repeated_sacct_warnings_become_one_line(caplog, monkeypatch):
    monkeypatch.setattr(cluster.SqueueStates, "said", False)
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


class _Done:
    def __init__(self, returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def test_without_accounting_job_states_come_from_squeue_and_a_cancelled_job_ends(monkeypatch, caplog):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command[0])
        if command[0] == "sacct":
            return _Done(1, stderr="Slurm accounting storage is disabled")
        return _Done(0, stdout="41_0|RUNNING|vm\n41_1|CANCELLED|vm\n")

    monkeypatch.setattr(cluster.subprocess, "run", fake_run)
    monkeypatch.setattr(cluster.SqueueStates, "said", False)
    watcher = cluster.SqueueStates()
    for job in ("41_0", "41_1", "41_2"):
        watcher.register_job(job)
    with caplog.at_level(logging.INFO):
        watcher.update()
        watcher.update()
    assert calls == ["sacct", "squeue", "squeue"]  # sacct asked once; squeue from then on
    assert not watcher.is_done("41_0", mode="cache")  # still running
    assert watcher.is_done("41_1", mode="cache")  # scancel'led: the sweep stops waiting for it
    assert watcher.get_state("41_2", mode="cache") == cluster.GONE  # no longer listed: it ended
    assert caplog.text.count("sacct fails on this cluster") == 1
    assert "(sacct said: Slurm accounting storage is disabled)" in caplog.text


def test_a_controller_that_does_not_answer_changes_no_state(monkeypatch):
    monkeypatch.setattr(cluster.SqueueStates, "said", False)
    monkeypatch.setattr(cluster.subprocess, "run", lambda command, **kw: _Done(1, stderr="down"))
    watcher = cluster.SqueueStates()
    watcher.register_job("7")
    watcher.update()
    assert watcher.get_state("7", mode="cache") == "UNKNOWN" and not watcher.is_done("7", mode="cache")


def test_quiet_submitit_installs_the_watcher_on_submitits_slurm_jobs():
    from submitit.slurm.slurm import SlurmJob

    quiet_submitit()
    assert isinstance(SlurmJob.watcher, cluster.SqueueStates)
