"""The capacity model (bench/capacity_model.py): replicas, gateway, NATS and database figures for a target load."""

from __future__ import annotations

from pathlib import Path

from bench.capacity import PROFILE_PATH, load_profiles
from bench.capacity_model import UTILISATION, Assumptions, Profile, StageCost, plan, predicted_throughput

COPY = Profile("copy", (StageCost("fetch", cpu_sec=0.2, wall_sec=0.25), StageCost("upload", 0.05, 0.1)),
               servers_cpu_sec=0.1, nats_messages=3)
SUBS = Profile("subtitled", (StageCost("fetch", 0.2, 0.25), StageCost("trim", 0.2, 0.3),
                             StageCost("transcribe", 6.0, 4.0), StageCost("upload", 0.05, 0.1)),
               servers_cpu_sec=0.1, nats_messages=5)
PROFILES = {"copy": COPY, "subtitled": SUBS}


def test_replicas_follow_the_bound_of_each_stage() -> None:
    a = Assumptions(cores_per_replica=2.0, slots_per_replica=2)
    result = plan({"copy": 100.0}, PROFILES, a)
    fetch = next(s for s in result.stages if s.stage == "fetch")
    # fetch: 2 cores / 0.2 core-s = 10 jobs/s; 2 slots / 0.25 s = 8 jobs/s -> slots bind; 100 / (8 * 0.7) -> 18
    assert (fetch.bound, fetch.replica_jobs_per_sec, fetch.replicas) == ("slots", 8.0, 18)
    upload = next(s for s in result.stages if s.stage == "upload")
    assert upload.replicas == 8  # 2 / 0.05 = 40 jobs/s by CPU, 2 / 0.1 = 20 by slots -> 100 / 14 -> 8
    assert result.gateway_replicas == 2  # 100 POST/s / 220 + 300 GET/s / 620 = 0.94 processes, at 70 %: 2


def test_a_stage_shared_by_two_kinds_adds_both_loads() -> None:
    result = plan({"copy": 10.0, "subtitled": 10.0}, PROFILES, Assumptions())
    fetch = next(s for s in result.stages if s.stage == "fetch")
    assert fetch.jobs_per_sec == 20.0
    transcribe = next(s for s in result.stages if s.stage == "transcribe")
    assert transcribe.bound == "cpu" and transcribe.replicas == 43  # 10 / (2 / 6 * 0.7)


def test_gpu_transcribers_are_sized_by_batched_speed() -> None:
    a = Assumptions(gpu_transcribe_x_real_time=200.0, clip_sec=30.0, slots_per_replica=2)
    cpu_plan = plan({"subtitled": 10.0}, PROFILES, a)
    gpu_plan = plan({"subtitled": 10.0}, PROFILES, a, gpu=True)
    on_cpu = next(s for s in cpu_plan.stages if s.stage == "transcribe")
    on_gpu = next(s for s in gpu_plan.stages if s.stage == "transcribe")
    assert on_gpu.replicas == 3  # a GPU does a clip per 0.15 s: 6.7 jobs/s, 10 / (6.7 * 0.7) -> 3
    assert on_gpu.replicas < on_cpu.replicas


def test_database_and_nats_limits_are_flagged() -> None:
    a = Assumptions(db_pool_max=10, db_max_connections=100, nats_publishes_per_sec=1000.0)
    result = plan({"copy": 300.0}, PROFILES, a)
    assert result.nats_publishes_per_sec == 900.0 and result.nats_nodes == 3
    assert result.db_connections_pool_ceiling > 100
    assert any(w.startswith("PostgreSQL") for w in result.warnings)
    assert any(w.startswith("NATS") for w in result.warnings)
    assert any("MAX_REPLICAS" in w for w in result.warnings)  # fetch needs 300 / 5.6 = 54 replicas


def test_small_stack_prediction_is_the_lower_bound() -> None:
    per_sec, bound = predicted_throughput(COPY, cores=2.0, slots=2)
    assert bound == "cpu" and abs(per_sec - 2.0 / 0.35) < 1e-9  # every process shares the 2 cores
    per_sec, bound = predicted_throughput(COPY, cores=16.0, slots=1)
    assert bound == "slots" and per_sec == 4.0  # fetch: one slot, 0.25 s a job
    assert 0 < UTILISATION < 1


def test_the_committed_profile_loads_and_plans() -> None:
    profiles = load_profiles(Path(PROFILE_PATH))
    assert {"copy", "subtitled"} <= set(profiles)
    result = plan({"copy": 10000 / 60}, profiles, Assumptions())
    assert {s.stage for s in result.stages} == {c.stage for c in profiles["copy"].stages}
    assert all(s.replicas >= 1 for s in result.stages)
