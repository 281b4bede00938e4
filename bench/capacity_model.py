"""The capacity model: from per-job stage costs (measured by bench/capacity.py) to replicas for a target load.

Per stage, a job costs `cpu_sec` (core-seconds, the worker and its ffmpeg children) and holds one of the worker's
WORKER_CONCURRENCY slots for `wall_sec`. A replica of a stage serves at most `slots / wall_sec` jobs/s (slot
bound) and `cores / cpu_sec` jobs/s (CPU bound); replicas are sized so each runs at `UTILISATION` of the lower of
the two (headroom for bursts and for KEDA's lag threshold). The servers (NATS, S3, PostgreSQL) and the gateway
are sized from the job rate too; every figure the model does not measure is an `Assumptions` field, printed with
the plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

UTILISATION = 0.7  # replicas are planned to run at this share of their capacity


@dataclass(frozen=True)
class StageCost:
    """What one job costs one stage: core-seconds and seconds holding a slot (measured one job at a time; on a
    loaded machine, less the time its threads waited for a CPU: `wall_sec_measured` is the span as measured)."""

    stage: str
    cpu_sec: float
    wall_sec: float
    wall_sec_measured: float = 0.0


@dataclass(frozen=True)
class Profile:
    """A kind of job (its route through the stages) and what each stage and the shared servers spend on it."""

    kind: str
    stages: tuple[StageCost, ...]
    servers_cpu_sec: float = 0.0  # NATS + S3 + gateway core-seconds per job (measured on the same run)
    nats_messages: float = 0.0  # JetStream publishes per job (stage hops, end event)

    @property
    def cpu_sec(self) -> float:
        return sum(s.cpu_sec for s in self.stages) + self.servers_cpu_sec


@dataclass(frozen=True)
class Assumptions:
    """What the plan takes as given (defaults: the reasons are in CAPACITY.md)."""

    cores_per_replica: float = 2.0  # CPU a worker pod may use (its limit, or its node's share)
    slots_per_replica: int = 2  # WORKER_CONCURRENCY
    gpu_transcribe_x_real_time: float = 200.0  # one GPU transcriber, batched (seed target 200-400x; not measured)
    clip_sec: float = 30.0  # media seconds per subtitled job (for the GPU transcriber)
    gateway_posts_per_sec: float = 220.0  # per gateway process (BENCHMARKS.md: 439/s for 2 processes, auth on)
    gateway_gets_per_sec: float = 620.0  # per gateway process (1,241/s for 2)
    reads_per_job: float = 3.0  # status reads per job (polls, the final GET; event streams count as one)
    nats_publishes_per_sec: float = 5000.0  # one R3 stream leader, default sync (BENCHMARKS.md: 1,191/s fsync each)
    nats_replicas: int = 3  # NATS_STREAM_REPLICAS: nodes = replicas (one node may be lost)
    db_pool_max: int = 10  # DB_POOL_MAX: connections per process at most
    db_max_connections: int = 100  # PostgreSQL's max_connections
    db_busy_sec_per_job: float = 0.03  # connection-seconds per job (about 15 short transactions of ~2 ms)
    max_replicas: int = 20  # services/k8s.py MAX_REPLICAS: KEDA's ceiling per stage


@dataclass
class StagePlan:
    stage: str
    jobs_per_sec: float
    replicas: int
    bound: str  # "cpu" or "slots": what limits one replica
    replica_jobs_per_sec: float


@dataclass
class Plan:
    jobs_per_sec: float
    stages: list[StagePlan] = field(default_factory=list)
    gateway_replicas: int = 0
    nats_nodes: int = 0
    nats_publishes_per_sec: float = 0.0
    db_connections_pool_ceiling: int = 0
    db_connections_busy: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def replica_rate(cost: StageCost, cores: float, slots: int) -> tuple[float, str]:
    """Jobs/s one replica of a stage serves, and what bounds it."""
    by_slots = slots / cost.wall_sec if cost.wall_sec > 0 else math.inf
    by_cpu = cores / cost.cpu_sec if cost.cpu_sec > 0 else math.inf
    return (by_cpu, "cpu") if by_cpu <= by_slots else (by_slots, "slots")


def gpu_transcribe(cost: StageCost, a: Assumptions) -> StageCost:
    """The transcribe stage on a GPU: the GPU is busy for the clip's media time over the batched speed-up (its
    batches hold many clips at once: the replica counts as one slot at that speed)."""
    return StageCost(cost.stage, cpu_sec=0.0, wall_sec=a.clip_sec / a.gpu_transcribe_x_real_time)


def plan(load: dict[str, float], profiles: dict[str, Profile], a: Assumptions, gpu: bool = False) -> Plan:
    """Replicas per stage, gateway replicas, NATS nodes and database connections for `load` (jobs/s per kind)."""
    rates: dict[str, float] = {}
    costs: dict[str, list[tuple[float, StageCost]]] = {}
    for kind, per_sec in load.items():
        for cost in profiles[kind].stages:
            if gpu and cost.stage == "transcribe":
                cost = gpu_transcribe(cost, a)
            rates[cost.stage] = rates.get(cost.stage, 0.0) + per_sec
            costs.setdefault(cost.stage, []).append((per_sec, cost))
    total = sum(load.values())
    result = Plan(jobs_per_sec=total)
    for stage, per_sec in rates.items():
        # one stage serving several kinds: the rate-weighted mean cost of a job there
        mixed = StageCost(stage, sum(r * c.cpu_sec for r, c in costs[stage]) / per_sec,
                          sum(r * c.wall_sec for r, c in costs[stage]) / per_sec)
        on_gpu = gpu and stage == "transcribe"  # one GPU per replica; its batched speed is the whole GPU's
        one, bound = replica_rate(mixed, a.cores_per_replica, 1 if on_gpu else a.slots_per_replica)
        replicas = max(1, math.ceil(per_sec / (one * UTILISATION)))
        result.stages.append(StagePlan(stage, round(per_sec, 3), replicas, bound, round(one, 3)))
        if replicas > a.max_replicas:
            fix = "raise WORKER_CONCURRENCY (it waits on I/O, not CPU)" if bound == "slots" else "give it more cores"
            result.warnings.append(f"{stage}: {replicas} replicas is over MAX_REPLICAS {a.max_replicas}: raise "
                                   f"it, or {fix}")
    gateway_load = total / a.gateway_posts_per_sec + total * a.reads_per_job / a.gateway_gets_per_sec
    result.gateway_replicas = max(2, math.ceil(gateway_load / UTILISATION))
    result.nats_publishes_per_sec = round(sum(profiles[k].nats_messages * r for k, r in load.items()), 1)
    result.nats_nodes = a.nats_replicas
    if result.nats_publishes_per_sec > a.nats_publishes_per_sec * UTILISATION:
        result.warnings.append(
            f"NATS: {result.nats_publishes_per_sec:.0f} publishes/s is past one stream leader's planned "
            f"{a.nats_publishes_per_sec * UTILISATION:.0f}/s: split the work stream (more nodes alone do not help)")
    processes = sum(s.replicas for s in result.stages) + result.gateway_replicas + 2  # + reaper, notifier
    result.db_connections_pool_ceiling = processes * a.db_pool_max
    result.db_connections_busy = round(total * a.db_busy_sec_per_job, 1)
    if result.db_connections_pool_ceiling > a.db_max_connections:
        result.warnings.append(
            f"PostgreSQL: {processes} processes x DB_POOL_MAX {a.db_pool_max} = "
            f"{result.db_connections_pool_ceiling} connections may open, over max_connections "
            f"{a.db_max_connections}; about {result.db_connections_busy} are busy at once: put PgBouncer "
            f"(transaction mode) in front or lower DB_POOL_MAX")
    return result


def predicted_throughput(profile: Profile, cores: float, slots: int) -> tuple[float, str]:
    """Jobs/s of a stack with one replica per stage sharing `cores` (the servers on them too), `slots` each:
    the slowest stage's slot bound, or all the CPU a job needs over the cores, whichever is lower."""
    by_slots = min(slots / c.wall_sec for c in profile.stages if c.wall_sec > 0)
    by_cpu = cores / profile.cpu_sec
    return (by_cpu, "cpu") if by_cpu <= by_slots else (by_slots, "slots")
