"""Concurrent jobs sharing an artifact cache make each artifact once; a killed maker blocks nobody.

Real processes, not threads: `flock` locks belong to open file descriptions, and the case that
matters is separate jobs (a multirun, SLURM jobs) on one cache directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

JSON_JOB = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from earlyexit.harness.artifacts import cached_json
cache, counter, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])

def compute():
    with open(counter, "a") as f:
        f.write("made\\n")
        f.flush()
    time.sleep(delay)
    return {"answer": 42}

print("ready", flush=True)  # imports done: what follows is the cache's work
print(json.dumps(cached_json(cache, "calibration", {"what": "shared"}, compute)))
"""

HEADS_JOB = """
import logging, sys
sys.path.insert(0, sys.argv[2])
logging.basicConfig(level=logging.INFO, format="%(message)s")
from conftest import tiny_gpt_neox
from earlyexit.exits.heads import HeadSpec
from earlyexit.exits.train import TrainConfig
from earlyexit.harness.artifacts import prepare_heads
from earlyexit.model.adapter import get_adapter
import torch

adapter = get_adapter(tiny_gpt_neox(layers=4, seed=0).float())
stream = torch.randint(0, 97, (4000,), generator=torch.Generator().manual_seed(0))
tcfg = TrainConfig(steps=40, batch_size=2, seq_len=32, warmup=2, checkpoint_every=10)
heads, key = prepare_heads(adapter, HeadSpec("linear", (1, 2)), tcfg, {"text": "t"}, stream, sys.argv[1])
print("KEY", key, float(sum(p.sum() for p in heads.parameters())))
"""


def _start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_concurrent_jobs_make_a_json_artifact_once_and_all_read_it(tmp_path):
    counter = tmp_path / "made.txt"
    jobs = [_start(JSON_JOB, str(tmp_path / "cache"), str(counter), "2") for _ in range(3)]
    outputs = [job.communicate(timeout=120)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    assert counter.read_text().count("made") == 1
    assert all(out.strip().splitlines()[-1] == '{"answer": 42}' for out in outputs)


def test_a_job_waits_for_the_lock_saying_why_then_reads_what_the_holder_made(tmp_path):
    from earlyexit.data.keys import artifact_key
    from earlyexit.harness.artifacts import artifact_lock, artifact_path

    cache, counter = tmp_path / "cache", tmp_path / "made.txt"
    key = artifact_key(what="shared")
    with artifact_lock(cache, "calibration", key):
        waiter = _start(JSON_JOB, str(cache), str(counter), "0")
        seen = [waiter.stdout.readline()]
        while seen[-1] and seen[-1].strip() != "ready":  # import-time warnings may come first
            seen.append(waiter.stdout.readline())
        assert seen[-1].strip() == "ready", seen
        time.sleep(3)
        assert waiter.poll() is None, "the job must wait while another holds the lock"
        # The holder makes it (as cached_json does under the lock).
        path = artifact_path(cache, "calibration", key, ".result.json", {"what": "shared"})
        path.write_text('{"answer": 42}')
    waiter.wait(timeout=60)
    out = "".join(seen) + waiter.stdout.read()  # through the text buffer readline() filled
    assert waiter.returncode == 0 and "another job is making it; waiting" in out, out
    assert "lock released after" in out and out.strip().endswith('{"answer": 42}'), out
    assert not counter.exists(), "the waiter read the holder's artifact instead of making it again"


def test_a_job_killed_while_making_an_artifact_leaves_nothing_and_blocks_no_one(tmp_path):
    cache, counter = tmp_path / "cache", tmp_path / "made.txt"
    holder = _start(JSON_JOB, str(cache), str(counter), "600")
    deadline = time.monotonic() + 60
    while not (counter.exists() and counter.read_text()):  # the holder is inside compute()
        assert time.monotonic() < deadline and holder.poll() is None, holder.stdout.read()
        time.sleep(0.1)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert not list((cache / "calibration").glob("*.result.json")), "no artifact from the killed job"
    start = time.monotonic()
    next_job = _start(JSON_JOB, str(cache), str(counter), "0")
    out = next_job.communicate(timeout=120)[0]
    assert next_job.returncode == 0 and out.strip().splitlines()[-1] == '{"answer": 42}', out
    assert time.monotonic() - start < 60  # the dead holder's lock went with it
    assert counter.read_text().count("made") == 2  # the killed attempt, then the one that finished


def test_concurrent_jobs_needing_the_same_heads_train_them_once(tmp_path):
    tests_dir = str(ROOT / "tests")
    jobs = [_start(HEADS_JOB, str(tmp_path / "cache"), tests_dir) for _ in range(2)]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    trained = sum(out.count("heads: trained and stored") for out in outputs)
    assert trained == 1, outputs
    keys = {line for out in outputs for line in out.splitlines() if line.startswith("KEY")}
    assert len(keys) == 1, "both jobs hold the same weights: the waiter loaded what the trainer stored"
