"""Ray start-up, per-trial resources, shared storage on a cluster and per-node data preparation."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tune.cli import UsageError


ROOT = Path(__file__).resolve().parents[1]


def start_ray(address: str | None, resume: bool = False) -> None:
    """Local Ray, or join a cluster; trials' output stays in their logs, the driver shows the live table."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        import search_spaces
        import trainables
        import tune
        # other nodes get the project's code from here, whether or not it is installed there
        env = {"py_modules": [str(Path(m.__file__).parent) for m in (trainables, search_spaces, tune)]}
        use_token_if_found()
        failed, said = None, ""
        with stderr_kept() as written:   # Ray's core logs an authentication failure there, once a second
            try:
                ray.init(address=address, log_to_driver=False, runtime_env=env, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as e:
                failed, said = e, written()
        if failed and "Authentication token is missing or incorrect" in said:
            sent = ("no token (RAY_AUTH_MODE=disabled is set here)" if os.environ.get("RAY_AUTH_MODE") == "disabled"
                    else "this driver's token" if token_found() else "a driver with no token")
            raise UsageError(f"cannot join the Ray cluster at {address}: it uses token authentication and refused "
                             f"{sent}; give the driver the "
                             "cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; "
                             "`ray get-auth-token` on the head prints it)")
        if failed:
            sys.stderr.write(said)
            raise UsageError(f"cannot join the Ray cluster at {address}: {str(failed).splitlines()[0]}")
    else:
        if found := cluster_here(resume):
            raise UsageError(found)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        # "local": Ray's default would join a cluster of a stale `ray start` file too, and fail there
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}},
                 logging_level=logging.ERROR)  # Ray's start-up notices would bury a one-line error


def cluster_here(resume: bool = False) -> str | None:
    """Why a search without --address must not start a Ray of its own, or None: Ray's own ray.init() would
    join RAY_ADDRESS (set in a Ray job) or the last `ray start` on this machine, but as a local search, sized
    from this machine with its results on this machine's disk; and a second Ray beside one started here
    would book the same CPUs and GPUs twice. A search being resumed stays where it ran (--resume takes
    neither --address nor --storage)."""
    own = f"to {'resume this search' if resume else 'search'} on a Ray of its own"

    def join(address):
        return "" if resume else (f"to search on it give --address {address} and --storage (a folder every "
                                  "node sees, or a URI); ")
    address = os.environ.get("RAY_ADDRESS", "")
    if address and not address.startswith(("http://", "https://")):   # those are the Jobs CLI's, not ray.init's
        return f"RAY_ADDRESS is set ({address}), as in a Ray job: {join(address)}{own}, unset RAY_ADDRESS"
    from ray._private.utils import read_ray_address
    address = read_ray_address()   # written by `ray start`, removed by `ray stop` (not by a crash: hence the probe)
    host, _, port = (address or "").rpartition(":")
    if not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except OSError:
        return None
    return (f"a Ray cluster started with `ray start` runs on this machine ({address}): {join(address)}a Ray of "
            f"this search's own would book its CPUs and GPUs twice, so stop that one first (ray stop) {own}")


def token_found() -> bool:
    """Whether Ray finds a token here: RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token."""
    from ray._raylet import AuthenticationTokenLoader
    return AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)


def use_token_if_found() -> None:
    """Ray turns token authentication on for a cluster it finds itself (address=auto), not for one at an
    address: do what it does there, so a driver with the cluster's token joins a cluster that requires it.
    A token sent to a cluster without authentication is ignored; an explicit RAY_AUTH_MODE is kept."""
    if os.environ.get("RAY_AUTH_MODE") or not token_found():
        return
    from ray._raylet import Config
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")   # Ray's cached config reads the mode again (as Ray's own _enable_token_auth does)


@contextlib.contextmanager
def stderr_kept():
    """File descriptor 2 into a temporary file for the block (Ray's C++ core writes there, not to sys.stderr);
    yields a function that returns what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read())[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def nodes() -> list[dict]:
    """{"CPU": c, "GPU": g} of each live node of the local Ray or the cluster."""
    return [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes() if n.get("Alive")]


# GPUs as Ray names them (accelerator_type, from device 0 of each node) that have bf16 only emulated
# (compute capability under 8.0: Kepler to Turing), so slower than fp32 there. A name that is not surely
# one of them (Ray gives "RTX-6000" to both the Turing Quadro and the Ada card) is not judged.
NO_NATIVE_BF16 = re.compile(r"GV100|V100S?|T4|T\d{3,4}|[KMP]\d+m?|TITAN-(V|RTX|Xp?)|GeForce-GTX-.*|GeForce-RTX-20.*")


def emulated_bf16() -> list[str]:
    """The accelerator types of the live GPU nodes that lack native bf16."""
    types = {k.removeprefix("accelerator_type:") for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU")
             for k in n["Resources"] if k.startswith("accelerator_type:")}
    return sorted(t for t in types if NO_NATIVE_BF16.fullmatch(t))


def per_trial(gpus_per_trial: float | None, cpus_per_trial: float | None, shape: list[dict] | None = None,
              cluster: bool = False) -> dict:
    """{"cpu": c, "gpu": g} for one trial, sized by the nodes (`shape`, default: this Ray's) that will hold it:
    a trial runs on one node, so a cluster's totals say nothing of what a trial can ask for. On a `cluster`
    an autoscaler may add the nodes a request needs, so an explicit request no node holds yet is a warning
    (its trials wait PENDING), not an error; on one machine it is refused."""
    shape = nodes() if shape is None else shape
    gpus = sum(n["GPU"] for n in shape)
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpus else 0.0
        if cluster and not gpus:   # an autoscaler adds GPU nodes only for trials that ask for GPUs
            print("note: no node of this cluster has a GPU now, so its trials train on CPUs; for GPU trials that "
                  "wait for the GPU nodes an autoscaler adds, give --gpus-per-trial and --cpus-per-trial", flush=True)
    if gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g}: use 0, 1 or a fraction of one GPU")
    if gpus_per_trial > 1:  # Ray would reserve them all while the trainer drives one
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g}: a trial trains on one GPU; use 1, or a fraction "
                         "such as 0.5 or 0.25 to pack trials on a GPU")
    hosts = [n for n in shape if n["GPU"] >= gpus_per_trial] if gpus_per_trial else [n for n in shape if n["CPU"]]
    # nothing to size a trial from: on a cluster only until nodes join (a head without GPUs, or `--num-cpus 0`)
    if not hosts and (not cluster or cpus_per_trial is None):
        where = "this cluster has none yet" if cluster else "this machine has none"
        asks = f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs" if gpus_per_trial else "CPU trials need CPUs"
        raise UsageError(f"{asks}, but {where}" +
                         ("; give --cpus-per-trial too, and trials wait for the nodes an autoscaler adds"
                          if cluster else ""))
    if cpus_per_trial is None:
        # a GPU node's CPUs follow its GPU share; without GPUs, about four trials at once on the largest node
        cpus_per_trial = max(1.0, min(math.floor(n["CPU"] * gpus_per_trial / n["GPU"]) for n in hosts)
                             if gpus_per_trial else math.floor(max(n["CPU"] for n in hosts) * 0.25))
    if cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial {cpus_per_trial:g} must be above 0")
    if not any(n["CPU"] >= cpus_per_trial for n in hosts):
        if hosts:
            most = f"the most CPUs on a node{' with a GPU' if gpus_per_trial else ''}: {max(n['CPU'] for n in hosts):g}"
        else:
            most = f"no node has {'a GPU' if gpus_per_trial else 'CPUs'}"
        msg = f"--cpus-per-trial {cpus_per_trial:g} with --gpus-per-trial {gpus_per_trial:g}: no node can hold it ({most})"
        if not cluster:
            raise UsageError(msg)
        print(f"warning: {msg} yet; its trials wait PENDING until an autoscaler adds such a node", flush=True)
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial}


def slots(resources: dict, shape: list[dict] | None = None) -> int:
    """How many trials the nodes (`shape`, default: this Ray's) can run at once with these per-trial resources."""
    total = 0
    for n in (nodes() if shape is None else shape):
        k = math.floor(n["CPU"] / resources["cpu"] + 1e-9)
        if resources["gpu"]:   # a fraction must fit on one GPU (Ray splits each GPU, not their sum): 0.4 fits 2
            k = min(k, math.floor(n["GPU"] + 1e-9) * math.floor(1 / resources["gpu"] + 1e-9))
        total += k
    return max(total, 1)


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


def prepare(datasets: list[str], splits: list[str], stats: bool, tensor_sizes: list[int],
            holdouts: list[tuple[float, int]] = ()) -> dict:
    """Download or generate, verify, measure (normalize=dataset) and decode (pipeline=tensor) the folders of
    each dataset the splits read, and draw each (holdout_frac, holdout_seed) once, so that a class too small
    for it is one line here rather than an error in every trial. Returns {dataset: {split: fingerprint of
    the files it reads}}."""
    from trainables.data import dataset_stats, folders_for, holdout, index, prepare as ready, tensor_cache
    out = {}
    for d in datasets:
        for split in splits:
            idx = index(ready(d), folders_for(split))
            out.setdefault(d, {})[split] = idx.fingerprint
            for frac, seed in holdouts if split == "holdout" else ():
                holdout(idx, seed, frac)
            if stats:
                dataset_stats(idx)
            for size in tensor_sizes:
                tensor_cache(idx, size)
    return out


def prepare_everywhere(datasets: list[str], splits: list[str], stats: bool, tensor_sizes: list[int],
                       holdouts: list[tuple[float, int]] = ()) -> dict:
    """Each node of a cluster prepares every dataset once, before any trial starts."""
    from trainables.data import DataError
    nodes = _alive_nodes()
    try:
        seen = ray.get([_on_node(n, prepare, datasets, splits, stats, tensor_sizes, holdouts) for n in nodes])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DataError):
            raise e.cause from None
        raise
    for node, prints in zip(nodes, seen):
        for d in datasets:
            if prints[d] != seen[0][d]:  # trials on that node would train and validate on other files
                raise UsageError(f"dataset {d} is not the same on every node of the cluster (node {node} has "
                                 "other files); give every node the same copy")
    return seen[0]


# Training images of the downloadable datasets (every size of a dataset has the same files)
KNOWN_TRAIN_IMAGES = {"imagenette": 9469, "imagewoof": 9025}


def train_images(data: str) -> int:
    """How many images train/ holds, without preparing the dataset (a download or generation)."""
    from trainables.data import IMAGE_EXTS, REAL, class_images, layout, held_for_test
    from trainables.synthetic import WNIDS, SyntheticSpec
    if data in REAL:
        return KNOWN_TRAIN_IMAGES[data.split("-")[0]]
    if data.split(":")[0] == "synthetic":
        return SyntheticSpec.parse(data).train * len(WNIDS)
    if layout(Path(data)) == "classes":
        classes = class_images(Path(data))
        return sum(map(len, classes.values())) - len(held_for_test(classes))
    return sum(Path(n).suffix.lower() in IMAGE_EXTS for _, _, names in os.walk(Path(data) / "train") for n in names)


def seconds_per_image(arch: str, size: int, steps: int = 2, bs: int = 8) -> float:
    """One training step of the model on this machine's CPUs, timed on random images (after one warm-up)."""
    import time

    import torch
    from trainables.config import TrainConfig
    from trainables.learner import make_model
    model = make_model(TrainConfig(arch=arch), 10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 10, (bs,))
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / (steps * bs)


def cpu_estimate(arch: str, size: int, images: int, samples: int, max_epochs: int) -> str:
    """How long a search's trials would take on this machine's CPUs, at most (every trial to the end; ASHA
    stops some sooner), from one timed training step."""
    per_image = seconds_per_image(arch, size)
    hours = per_image * images * max_epochs * samples / 3600
    return (f"on this machine's CPUs its {samples} trials of up to {max_epochs} epochs would take up to about "
            f"{hours:,.0f} hours ({arch} at {size} px: {1000 * per_image:.0f} ms a training image here, "
            f"{images} images an epoch)")
