"""Ray start-up, per-trial resources, shared storage on a cluster and per-node data preparation."""
from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tune.cli import UsageError


ROOT = Path(__file__).resolve().parents[1]


def start_ray(address: str | None) -> None:
    """Local Ray, or join a cluster; trials' output stays in their logs, the driver shows the live table."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        import search_spaces
        import trainables
        import tune
        # other nodes get the project's code from here, whether or not it is installed there
        env = {"py_modules": [str(Path(m.__file__).parent) for m in (trainables, search_spaces, tune)]}
        try:
            ray.init(address=address, log_to_driver=False, runtime_env=env, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    else:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}},
                 logging_level=logging.ERROR)  # Ray's start-up notices would bury a one-line error


def totals() -> tuple[float, float]:
    """(CPUs, GPUs) of the local Ray or the cluster."""
    r = ray.cluster_resources()
    return r.get("CPU", 0.0), r.get("GPU", 0.0)


def per_trial(gpus_per_trial: float | None, cpus_per_trial: float | None) -> dict:
    """{"cpu": c, "gpu": g} for one trial. GPUs are used when present; fractions pack trials on a GPU."""
    cpus, gpus = totals()
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpus else 0.0
    if gpus_per_trial < 0 or (gpus_per_trial > 1 and not float(gpus_per_trial).is_integer()):
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g}: use a fraction of one GPU or a whole number")
    if gpus_per_trial > 0 and gpus == 0:
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs, but this machine or cluster has none")
    if gpus_per_trial > gpus:
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g} is more than the {gpus:g} GPU(s) available")
    if cpus_per_trial is None:
        # CPUs follow the GPU share; without GPUs, about four trials at once
        share = gpus_per_trial / gpus if gpus_per_trial else 0.25
        cpus_per_trial = max(1.0, math.floor(cpus * share))
    if cpus_per_trial <= 0 or cpus_per_trial > cpus:
        raise UsageError(f"--cpus-per-trial {cpus_per_trial:g} must be above 0 and at most the {cpus:g} CPUs")
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial}


def slots(resources: dict) -> int:
    """How many trials the cluster can run at once with these per-trial resources."""
    cpus, gpus = totals()
    n = math.floor(cpus / resources["cpu"] + 1e-9)
    if resources["gpu"]:
        n = min(n, math.floor(gpus / resources["gpu"] + 1e-9))
    return max(n, 1)


def _alive_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]


def _on_node(node_id: str, fn, *args):
    task = ray.remote(num_cpus=0)(fn).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    return task.remote(*args)


def check_shared_storage(storage: str) -> None:
    """On a cluster every node must see the results folder: write a marker here, look for it on each node."""
    root = Path(storage)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".shared-check-{uuid.uuid4().hex}"
    marker.write_text("ok")
    try:
        seen = ray.get([_on_node(n, os.path.exists, str(marker)) for n in _alive_nodes()])
    finally:
        marker.unlink(missing_ok=True)
    if not all(seen):
        raise UsageError(f"--storage {storage} is not visible from every node of the cluster; "
                         "give a folder that every node mounts (NFS, a cluster file system)")


def prepare(datasets: list[str], stats: bool, tensor_sizes: list[int]) -> None:
    """Download or generate, verify, measure (normalize=dataset) and decode (pipeline=tensor) each dataset."""
    from trainables.data import dataset_stats, index, prepare as ready, tensor_cache
    for d in datasets:
        idx = index(ready(d))
        if stats:
            dataset_stats(idx)
        for size in tensor_sizes:
            tensor_cache(idx, size)


def prepare_everywhere(datasets: list[str], stats: bool, tensor_sizes: list[int]) -> None:
    """Each node of a cluster prepares every dataset once, before any trial starts."""
    from trainables.data import DataError
    try:
        ray.get([_on_node(n, prepare, datasets, stats, tensor_sizes) for n in _alive_nodes()])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DataError):
            raise e.cause from None
        raise
