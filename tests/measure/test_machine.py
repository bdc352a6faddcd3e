"""Machine load: readings, the busy verdict, the start warning, the record's fields. Synthetic
readings only (os.getloadavg and the /proc/stat reader patched): nothing is timed."""

from __future__ import annotations

import logging
import math

import pytest

from earlyexit.measure import machine
from earlyexit.measure.machine import (
    BUSY_LOAD_PER_CPU,
    RECORD_KEYS,
    STEAL_LIMIT,
    TPOT_SPREAD_LIMIT,
    WARN_LOAD_PER_CPU,
    LoadMonitor,
    Reading,
    busy,
    machine_metrics,
    profile_inconsistent,
    read_cpu_times,
    steal_share,
    take_reading,
    tpot_spread,
    warn_if_busy,
)

QUIET_TPOTS = [0.0050, 0.0055, 0.0061, 0.0058]  # 1.22x: a quiet machine's repeats


def cpu_line(user=0, system=0, idle=0, steal=0, guest=0) -> tuple[int, ...]:
    """/proc/stat's cpu columns: user nice system idle iowait irq softirq steal guest guest_nice."""
    return (user, 0, system, idle, 0, 0, 0, steal, guest, 0)


def reading(load: float | None = 0.3, cpus: int = 2, times: tuple[int, ...] | None = None) -> Reading:
    return Reading(load, cpus, times)


@pytest.fixture
def fake_machine(monkeypatch):
    """Patch the load average, the CPUs and the /proc/stat reader; set `state` to change them."""
    state = {"load": 0.25, "cpus": {0, 1}, "stat": cpu_line(user=100, idle=900)}
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: state["cpus"], raising=False)
    monkeypatch.setattr(machine, "read_cpu_times", lambda path=None: state["stat"])
    return state


def test_a_reading_holds_the_load_the_cpus_and_the_cpu_times(fake_machine):
    fake_machine["load"] = 2.64
    assert take_reading() == Reading(2.64, 2, cpu_line(user=100, idle=900))


def test_a_platform_without_a_load_average_or_proc_stat_reads_none(monkeypatch):
    def no_loadavg():
        raise OSError("load average unobtainable")

    monkeypatch.setattr(machine.os, "getloadavg", no_loadavg)
    monkeypatch.setattr(machine, "read_cpu_times", lambda path=None: None)
    r = take_reading()
    assert r.load_avg is None and r.cpu_times is None and r.cpus >= 1
    assert busy([r, r], QUIET_TPOTS) == (False, "")


def test_cpu_count_falls_back_to_os_cpu_count_without_an_affinity_mask(monkeypatch):
    monkeypatch.delattr(machine.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 16)
    assert machine.cpu_count() == 16
    monkeypatch.setattr(machine.os, "cpu_count", lambda: None)
    assert machine.cpu_count() == 1


def test_proc_stat_is_parsed_from_its_first_line(tmp_path):
    path = tmp_path / "stat"
    path.write_text("cpu  268343 0 16941 312807 1000 0 357 1457 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert read_cpu_times(path) == (268343, 0, 16941, 312807, 1000, 0, 357, 1457, 0, 0)
    path.write_text("cpu  1 2 3 4\n")  # a kernel that does not count steal
    assert read_cpu_times(path) is None
    assert read_cpu_times(tmp_path / "missing") is None


def test_steal_share_is_the_stolen_part_of_the_cpu_time_between_readings():
    start = reading(times=cpu_line(user=1000, idle=1000, steal=10, guest=50))
    end = reading(times=cpu_line(user=1600, system=100, idle=1200, steal=110, guest=400))
    # 600 + 100 + 200 + 100 ticks passed; guest time is inside user time, not counted twice.
    assert steal_share(start, end) == pytest.approx(100 / 1000)
    assert steal_share(start, start) is None  # no time passed: unknown, not 0
    assert steal_share(start, reading(times=None)) is None


def test_quiet_machine_is_not_busy():
    start = reading(0.4, times=cpu_line(user=100, idle=900))
    end = reading(1.3, times=cpu_line(user=1100, idle=1900, steal=5))  # our own run: ~1 core
    assert busy([start, end], QUIET_TPOTS) == (False, "")


def test_load_above_the_limit_per_cpu_is_busy_and_says_so():
    limit = BUSY_LOAD_PER_CPU * 2
    verdict, reason = busy([reading(0.5), reading(limit + 0.4)], QUIET_TPOTS)
    assert verdict is True
    assert f"load average {limit + 0.4:.2f} at the end" in reason and "2 CPUs" in reason
    assert busy([reading(limit), reading(limit)], QUIET_TPOTS)[0] is False  # at the limit: not above
    # The same load on a machine with more CPUs is no longer busy: the limit is per CPU.
    assert busy([reading(limit + 0.4, cpus=16), reading(limit + 0.4, cpus=16)], QUIET_TPOTS)[0] is False


def test_a_wide_spread_of_full_tpot_is_busy_and_one_token_outputs_are_ignored():
    wild = [0.005, 0.006, 0.3]  # 60x, as the busy run
    verdict, reason = busy([reading(), reading()], wild)
    assert verdict is True and "60.0x" in reason and f"{TPOT_SPREAD_LIMIT:g}x" in reason
    assert tpot_spread([0.005, math.nan, 0.006]) == pytest.approx(1.2)
    assert tpot_spread([0.005]) is None and tpot_spread([]) is None
    at_limit = [0.005, 0.005 * TPOT_SPREAD_LIMIT]
    assert busy([reading(), reading()], at_limit)[0] is False


def test_cpu_steal_above_its_share_is_busy():
    start = reading(times=cpu_line(user=0, idle=0))
    stolen = int(1000 * (STEAL_LIMIT + 0.03))
    end = reading(times=cpu_line(user=1000 - stolen, steal=stolen))
    verdict, reason = busy([start, end], QUIET_TPOTS)
    assert verdict is True and "CPU steal 8.0%" in reason
    low = reading(times=cpu_line(user=990, steal=10))
    assert busy([start, low], QUIET_TPOTS) == (False, "")


def test_every_reason_is_named():
    start = reading(0.2, times=cpu_line())
    end = reading(9.0, times=cpu_line(user=500, steal=500))
    verdict, reason = busy([start, end], [0.001, 0.1])
    assert verdict is True and len(reason.split("; ")) == 3


def profile_json(**changes) -> dict:
    """A CostProfile.to_json()-shaped dict with sensible times, changed as asked."""
    data = {
        "identity": {"format": "earlyexit.profile/1"},
        "rows": [1, 2],
        "kv_lengths": [12, 20],
        "segment_fixed_ms": [[0.01, 0.02], [0.0, 0.02]],
        "layer_ms": [[0.5, 0.6], [0.7, 0.8]],
        "unembed_ms": [0.3, 0.4],
        "head_ms": 0.2,
        "decision_ms": {"entropy": 0.25, "max-prob": 0.24, "margin": 0.26},
        "pass_fixed_ms": 0.4,
        "projection_layer_ms": None,
        "depth_ratio": [[0.8, 0.7], [1.0, 1.0]],
    }
    return {**data, **changes}


def test_a_profile_with_a_negative_time_or_ratio_is_inconsistent():
    assert profile_inconsistent(profile_json()) is False
    assert profile_inconsistent(profile_json(layer_ms=[[0.5, -0.1], [0.7, 0.8]])) is True
    assert profile_inconsistent(profile_json(depth_ratio=[[0.8, -0.2], [1.0, 1.0]])) is True
    assert profile_inconsistent(profile_json(depth_ratio=[-0.3, 1.0])) is True  # an old flat ratio
    assert profile_inconsistent(profile_json(decision_ms={"entropy": -0.01})) is True
    assert profile_inconsistent(profile_json(pass_fixed_ms=-0.2)) is True
    assert profile_inconsistent(profile_json(depth_ratio=[[math.nan], [1.0]])) is True
    assert profile_inconsistent(profile_json(depth_ratio=None)) is False  # an older profile


def test_machine_metrics_returns_exactly_the_record_fields():
    start = reading(0.5, times=cpu_line(user=100, idle=100))
    end = reading(3.9, times=cpu_line(user=1060, idle=100, steal=40))
    out = machine_metrics(start, end, QUIET_TPOTS, profile_json(head_ms=-1.0))
    assert tuple(out) == RECORD_KEYS
    assert out["machine_busy"] is True and "3.90 at the end" in out["machine_busy_reason"]
    assert out["load_avg_start"] == 0.5 and out["load_avg_end"] == 3.9
    assert out["cpu_steal_share"] == pytest.approx(0.04)
    assert out["full_tpot_spread"] == pytest.approx(0.0061 / 0.0050)
    assert out["profile_inconsistent"] is True
    assert machine_metrics(start, start, [], None)["profile_inconsistent"] is None


def test_start_warning_names_the_load_and_the_cpus_when_others_hold_the_cpu(fake_machine, caplog):
    log = logging.getLogger("test_machine")
    fake_machine["load"] = WARN_LOAD_PER_CPU * 2 + 0.64
    with caplog.at_level(logging.WARNING, logger="test_machine"):
        r = warn_if_busy(log)
    assert r.load_avg == pytest.approx(2.64) and r.cpus == 2
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "load average 2.64 on 2 CPUs" in record.getMessage()
    caplog.clear()
    fake_machine["load"] = 0.3
    with caplog.at_level(logging.WARNING, logger="test_machine"):
        warn_if_busy(log)
    assert caplog.records == []


def test_load_monitor_reads_at_begin_and_finish(fake_machine, caplog):
    monitor = LoadMonitor(logging.getLogger("test_machine"))
    with pytest.raises(ValueError, match="begin"):
        monitor.metrics(QUIET_TPOTS)
    fake_machine["load"] = 0.2
    monitor.begin()
    fake_machine.update(load=3.5, stat=cpu_line(user=1000, idle=900, steal=100))
    monitor.finish()
    out = monitor.metrics(QUIET_TPOTS)
    assert out["load_avg_start"] == 0.2 and out["load_avg_end"] == 3.5
    assert out["cpu_steal_share"] == pytest.approx(0.1)
    assert out["machine_busy"] is True and out["profile_inconsistent"] is None
