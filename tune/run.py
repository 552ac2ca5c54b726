"""Run a hyperparameter search: python tune/run.py --space full [options]

Ray Tune runs trials of trainables/ on every GPU (or CPU) of this machine or a Ray cluster; Optuna's TPE
picks configs, ASHA stops the weak ones early. Everything lands in results/<name>/: TensorBoard events,
the Optuna study (optuna.db), best_config.json for tune/final.py, leaderboard.csv and a report.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a clone without installing

from tune.cli import Parser, UsageError, quiet, run  # noqa: E402


def parse_args(argv):
    p = Parser(prog="tune/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python tune/run.py --space smoke\n"
                                       "  python tune/run.py --space full --data imagenette-160 --gpus-per-trial 0.25\n"
                                       "  python tune/run.py --resume results/full-20261123-101500")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--space", help="a named space (see --list-spaces) or a .yaml/.json file")
    what.add_argument("--resume", metavar="RESULTS/NAME", help="continue an interrupted or killed search (or, "
                      "on another driver, from its --storage URI: s3://bucket/prefix/<name>)")
    what.add_argument("--list-spaces", action="store_true", help="print the named spaces and exit")
    p.add_argument("--name", help="experiment name (default: <space>-<date>-<time>)")
    p.add_argument("--results", default="results", help="results root (default: results/)")
    p.add_argument("--data", help="dataset for every trial: a name or folder (overrides the space)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial (overrides the space)")
    p.add_argument("--samples", type=int, help="number of trials")
    p.add_argument("--max-epochs", type=int, help="epochs of a trial that is never stopped (ASHA's max_t)")
    p.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial")
    p.add_argument("--reduction-factor", type=int, help="ASHA keeps 1/factor of the trials at each rung")
    p.add_argument("--concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--searcher", choices=("tpe", "random"), default="tpe", help="random = baseline")
    p.add_argument("--scheduler", choices=("asha", "none"), default="asha", help="none = every trial runs to the end")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack trials (default 1 if any)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the GPU share of the CPUs)")
    p.add_argument("--retries", type=int, default=0, help="retries of a failed trial from its last checkpoint")
    p.add_argument("--time-budget", metavar="DURATION", help="the time the search may take (7200, 90m, 2h, 1h30m): "
                   "then no trial starts, running ones finish their epoch, and the search exports")
    p.add_argument("--allow-cpu", action="store_true",
                   help="search a space that requires a GPU (full, leaderboard) on CPUs anyway")
    p.add_argument("--warm-start", action="append", default=[], metavar="RESULTS/NAME",
                   help="start knowing the trials of a past search (repeat for several); its folder is only read")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto); needs --storage")
    p.add_argument("--storage", help="where the trials go: a folder every node sees (NFS), or a URI such as "
                                     "s3://bucket/prefix (the study and export stay in --results, mirrored there)")
    args = p.parse_args(argv)
    args.changed = [f"--{a.dest.replace('_', '-')}" for a in p._actions
                    if a.dest not in ("help", "resume") and getattr(args, a.dest) != a.default]
    return args


def space_with_overrides(args):
    import search_spaces
    from trainables.config import parse_overrides
    from trainables.data import is_name
    space = search_spaces.load(args.space)
    raw = space.to_dict()
    fixed = parse_overrides(args.set)
    if "epochs" in fixed:
        raise UsageError("a trial's epochs are the search's --max-epochs; set them there, not with --set")
    if args.data:
        fixed["data"] = args.data
    for k, v in fixed.items():
        raw[k] = v
    data = raw.get("data")
    if isinstance(data, str) and not is_name(data):
        raw["data"] = str(Path(data).expanduser().resolve())  # trials run in another working directory
    return search_spaces.parse(raw, space.name)


def settings_for(args):
    from search_spaces import judged_before_switch
    from tune.budget import parse_duration
    from tune.search import Settings
    space = space_with_overrides(args)
    opt = {k: getattr(args, k) if getattr(args, k) is not None else space.search.get(k, default)
           for k, default in (("samples", 20), ("max_epochs", space.fixed.get("epochs", 5)),
                              ("grace_period", 1), ("reduction_factor", 2))}
    if opt["samples"] < 1 or opt["max_epochs"] < 1 or opt["grace_period"] < 1:
        raise UsageError("--samples, --max-epochs and --grace-period must be at least 1")
    if opt["grace_period"] > opt["max_epochs"]:
        raise UsageError(f"--grace-period {opt['grace_period']} is beyond --max-epochs {opt['max_epochs']}")
    if opt["reduction_factor"] < 2:
        raise UsageError("--reduction-factor must be at least 2")
    if args.concurrent is not None and args.concurrent < 1:
        raise UsageError("--concurrent must be at least 1")
    if args.address and not args.storage:
        raise UsageError("--address needs --storage: a folder that every node of the cluster sees, or a URI "
                         "such as s3://bucket/prefix")
    storage = args.storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"bad experiment name {name!r}")
    root = Path(args.results).expanduser().resolve()
    s = Settings(space=space.to_dict(), space_name=space.name, name=name, root=str(root),
                 seed=args.seed, searcher=args.searcher, scheduler=args.scheduler, concurrent=args.concurrent,
                 gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                 retries=args.retries, address=args.address, storage=storage,
                 time_budget_s=parse_duration(args.time_budget) if args.time_budget else None,
                 warm_start=[w if "://" in w else str(Path(w).expanduser().resolve()) for w in args.warm_start] or None,
                 **opt)
    from tune.warm import read_settings
    for w in s.warm_start or []:  # a mistyped folder stops here, before Ray starts or data is prepared
        read_settings(w)
    if s.experiment.exists():
        raise UsageError(f"{s.experiment} already exists; pick another --name, or continue it with "
                         f"--resume {s.experiment}")
    if storage and "://" in storage:
        check_uri(s.location)
    elif storage and Path(s.location).exists():
        raise UsageError(f"{s.location} already exists; pick another --name")
    unfair = args.scheduler == "asha" and judged_before_switch(space, opt["max_epochs"], opt["grace_period"])
    if unfair:
        print(f"warning: {unfair}", file=sys.stderr, flush=True)
    return s, space


def home_of(location: str) -> Path:
    """The driver's folder of a search kept in an object store. On another machine it is made again, at the
    path it had (Ray's and Optuna's state name it), from what the store mirrors: search.json and the study
    of Ray's last snapshot, and the time a --time-budget has spent."""
    from trainables.files import atomic_file, write_json, write_text
    from tune.trials import BUDGET_FILE, SETTINGS_FILE, STUDY_FILE, Experiment, read_text
    exp = Experiment(location.rstrip("/"))
    try:
        settings = exp.settings()
    except OSError as e:
        raise UsageError(f"--resume: cannot reach {location} ({str(e).splitlines()[0]})") from None
    if not settings or not settings.get("storage"):
        raise UsageError(f"{location} is not a search started by tune/run.py with --storage (no {SETTINGS_FILE})")
    home = Path(settings["root"]) / settings["name"]
    if not (home / SETTINGS_FILE).is_file():
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--resume: the search's folder {home} cannot be made here ({e.strerror})") from None
        db = exp.study_file()
        if db is not None:
            atomic_file(home / STUDY_FILE, lambda tmp: tmp.write_bytes(db.read_bytes()))
        if (spent := read_text(exp.fs, f"{exp.path}/{BUDGET_FILE}")) is not None:   # with --time-budget
            write_text(home / BUDGET_FILE, spent)
        write_json(home / SETTINGS_FILE, settings)  # last: it marks the folder whole
        print(f"made the search's folder {home} from {location}", flush=True)
    return home


def check_uri(location: str) -> None:
    """One line, before anything starts, when the object store cannot be reached or the search is there."""
    import pyarrow.fs as pafs

    from tune.trials import filesystem
    try:
        fs, path = filesystem(location)
        bucket, there = fs.get_file_info([path.split("/")[0], path])
    except (OSError, ValueError) as e:
        raise UsageError(f"--storage: cannot reach {location} ({str(e).splitlines()[0]})") from None
    if bucket.type == pafs.FileType.NotFound:
        raise UsageError(f"--storage: {location.split('://')[0]}://{bucket.path} does not exist; create it first")
    if there.type != pafs.FileType.NotFound:
        raise UsageError(f"{location} already exists; pick another --name")


def values_of(space, key) -> list:
    """Every value a key can take in a space (a range gives none: trials prepare those themselves)."""
    from trainables.config import FIELDS
    if key in space.params:
        d = space.params[key]
        return list(d.args) if d.kind == "choice" else []
    return [space.fixed.get(key, FIELDS[key].default)]


def with_data_path(space, cpus_per_trial: float):
    """A space that leaves `pipeline` to the config's default (fastai's, decoding JPEGs in loader processes)
    gets the tensor path where a trial has under 2 CPUs: fastai's path would decode in the training process.
    A pipeline the space or --set names is kept."""
    import search_spaces
    if "pipeline" in space.fixed or "pipeline" in space.params or cpus_per_trial >= 2:
        return space
    print(f"{cpus_per_trial:g} CPU per trial leaves fastai's data path no loader process: the trials use "
          "pipeline=tensor (keep fastai's with --set pipeline=fastai)", flush=True)
    return search_spaces.parse({**space.to_dict(), "pipeline": "tensor"}, space.name)


def refuse_on_cpus(space, s) -> None:
    """A space made for GPUs, about to train on CPUs: one line with what it would cost, before anything runs."""
    from trainables.config import FIELDS
    from tune import resources
    archs = values_of(space, "arch") or [FIELDS["arch"].default]
    arch = max(archs, key=lambda a: a != "tiny")   # one the search may draw that is not the tiny model
    size = max(values_of(space, "size") or [space.params["size"].values_at_bounds[1]])
    images = max(resources.train_images(d) for d in values_of(space, "data"))
    raise UsageError(f"space {space.name} requires a GPU and its trials would train on CPUs: "
                     f"{resources.cpu_estimate(arch, size, images, s.samples, s.max_epochs)}; use a GPU, a CPU "
                     "space (smoke, small, real_cpu), or pass --allow-cpu to run it anyway" +
                     ("; on a cluster whose GPU nodes have yet to join, give --gpus-per-trial and --cpus-per-trial"
                      if s.address else ""))


def preparation(space) -> dict:
    """What trials will need ready on every node: datasets, statistics, a tensor cache per training size."""
    tensor = "tensor" in values_of(space, "pipeline")
    return {"datasets": values_of(space, "data"), "splits": values_of(space, "split"),
            "holdouts": [(f, s) for f in values_of(space, "holdout_frac") for s in values_of(space, "holdout_seed")],
            "stats": "dataset" in values_of(space, "normalize"),
            "tensor_sizes": sorted(set(values_of(space, "size"))) if tensor else []}


def main(argv=None):
    quiet()
    args = parse_args(argv)
    if args.list_spaces:
        import search_spaces
        print("\n\n".join(search_spaces.describe(search_spaces.load(n)) for n in search_spaces.named()))
        return 0

    import ray
    from trainables.data import check, describe_folder
    from tune import resources
    from tune.budget import Budget, parse_duration, shown, spent_before
    from tune.export import ExportError, export, print_summary
    from tune.pruning import catch_up, close_lost
    from trainables.board import experiment_summary, write_events
    from tune.search import Settings, board_columns, build_tuner, launch_note, restore_tuner
    from tune.trials import BOARD_FILE, SETTINGS_FILE, Experiment, filesystem, mend_search_state, upload

    if args.resume:
        s = Settings.load(home_of(args.resume) if "://" in args.resume else Path(args.resume).expanduser().resolve())
        changed = [c for c in args.changed if c not in ("--samples", "--time-budget")]
        if changed:
            raise UsageError(f"--resume continues a search with its saved settings (search.json); "
                             f"{', '.join(changed)} cannot change them (only --samples, to add trials)")
        if args.samples is not None and args.samples < s.samples:  # as many: a retry of an extension that failed
            raise UsageError(f"--resume --samples {args.samples}: the search has {s.samples} trials; "
                             "--samples can only add trials")
        if args.time_budget:   # this much more from now, on top of what the search has spent
            if args.samples is None:
                raise UsageError("--resume --time-budget gives the trials --samples adds their own time; it needs "
                                 "--samples")
            if not s.time_budget_s:  # its searcher and stopper were saved without one
                raise UsageError(f"--resume --time-budget: {s.name} ran without a time budget, and a resume cannot "
                                 "add one")
            s.time_budget_s = spent_before(s.experiment) + parse_duration(args.time_budget)
        elif args.samples and s.time_budget_s and spent_before(s.experiment) >= s.time_budget_s:
            raise UsageError(f"--resume --samples {args.samples}: the search's time budget ({shown(s.time_budget_s)}) "
                             "is spent, so no trial would start; give the added trials time with --time-budget")
        space = s.parsed_space()
    else:
        s, space = settings_for(args)
    data = preparation(space)["datasets"]
    for d in data:  # a missing folder stops here, before Ray starts or anything is written
        check(d)
        if found := describe_folder(d):
            print(found, flush=True)
    resources.start_ray(s.address, resume=bool(args.resume))
    res = resources.per_trial(s.gpus_per_trial, s.cpus_per_trial, cluster=bool(s.address))  # and impossible ones
    if res["gpu"] and "bf16" in values_of(space, "precision") and (slow := resources.emulated_bf16()):
        chosen = "precision's choices include bf16" if "precision" in space.params else "precision=bf16"
        msg = (f"{chosen}: {', '.join(slow)} GPUs have no native bfloat16 (only emulated, slower than fp32), "
               "and trials given it there fail; use precision=auto (fp16 with gradient scaling there) or fp16")
        if not s.address:
            raise UsageError(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)   # the cluster's other GPU nodes may have it
    if not args.resume:
        if space.requires == "gpu" and not res["gpu"] and not args.allow_cpu:
            refuse_on_cpus(space, s)
        space = with_data_path(space, res["cpu"])
        s.space = space.to_dict()
    prep = preparation(space)
    if s.address:   # the storage (a folder, or a URI) says nothing of the data each node reads
        if "://" not in s.storage:
            resources.check_shared_storage(s.storage)
        fingerprints = resources.prepare_everywhere(**prep)
    else:
        fingerprints = resources.prepare(**prep)

    if args.resume:
        if s.datasets and s.datasets != fingerprints:  # the trials so far trained on other files
            raise UsageError(f"the data of {s.experiment} changed since the search started "
                             f"({', '.join(d for d in fingerprints if fingerprints[d] != s.datasets.get(d))}); "
                             "a search resumes only on the files it started with")
        # the searcher, the study and ASHA's rungs carry on as they were
        if lost := mend_search_state(s.location, args.samples):
            print(f"{lost} trial(s) had started after Ray's last snapshot of the trials and are lost; "
                  "new ones take their place", flush=True)
        if study := Experiment(s.location, home=s.experiment).study():
            from tune.search import METRIC, param_space
            from tune.warm import space_distributions
            if behind := catch_up(study, s.location, METRIC, space_distributions(param_space(s)), s.max_epochs):
                print(f"{len(behind)} trial(s) caught up with Ray's snapshot (their copies were a snapshot "
                      "older): told from their folders and checkpoints", flush=True)
        if args.samples is not None:
            if args.samples > s.samples:
                print(f"extending {s.experiment} from {s.samples} to {args.samples} trials", flush=True)
            s.samples = args.samples
            s.save()
            if s.storage:
                upload(s.experiment, *filesystem(s.location), [SETTINGS_FILE])
        print(f"resuming {s.experiment}", flush=True)
        tuner = restore_tuner(s, res)
    else:
        warm = None
        if s.warm_start:   # before anything is written: a folder that is not a search stops here
            from tune.search import param_space
            from tune.warm import space_distributions, warm_trials
            warm, notes = warm_trials(s.warm_start, space_distributions(param_space(s)), s.max_epochs,
                                      s.parsed_space().fixed, fingerprints)
            if s.searcher == "random":
                notes.append("--searcher random draws every config at random: the past trials do not guide it, "
                             "and only their best configs run first")
            print("\n".join(notes), flush=True)
        try:
            s.experiment.mkdir(parents=True)
        except FileExistsError:  # another search took the name since the check
            raise UsageError(f"{s.experiment} already exists; pick another --name") from None
        s.datasets = fingerprints
        s.save()
        write_events(s.experiment / BOARD_FILE, experiment_summary(board_columns(s)))
        if s.storage:
            upload(s.experiment, *filesystem(s.location), [SETTINGS_FILE, BOARD_FILE])
        tuner = build_tuner(s, res, warm)
        if note := launch_note(s, res, warm):   # not on a resume: its trials may have finished
            print(note, flush=True)
    budget = Budget.begin(s.experiment, s.time_budget_s) if s.time_budget_s else None
    print(f"search {s.name}: space {s.space_name}, {s.samples} trials of at most {s.max_epochs} epochs, "
          f"{s.searcher} + {s.scheduler}, {res['cpu']:g} CPU / {res['gpu']:g} GPU per trial, data {', '.join(data)}"
          + (f", time budget {shown(budget.limit_s)} ({shown(budget.left_s())} left)" if budget else "") +
          f"\nwatch it: tensorboard --logdir {s.location}", flush=True)
    grid = tuner.fit()
    if budget:
        budget.seen(force=True)
    exp = Experiment(s.location, home=s.experiment)
    if args.resume:
        exp.drop_replayed_rows()
        # a trial the searcher's snapshot had and Ray's did not (they are saved apart) never ran again
        ran = {Path(r.path).name for r in grid}
        if study := exp.study():
            close_lost(study, lambda t: t.user_attrs.get("ray_trial_id") in ran)
    if grid.errors:
        print(f"{len(grid.errors)} trial(s) failed; their errors are in {s.experiment}/<trial>/error.txt",
              flush=True)
    study = exp.study()
    spent = bool(budget and budget.over())
    if spent:
        stopped = [t for t in study.trials if t.user_attrs.get("stopped_by") == "time budget"]
        print(f"time budget {shown(budget.limit_s)} spent: {len(stopped)} running trial(s) stopped once their epoch "
              f"ended, {max(0, s.samples - len(grid))} of {s.samples} trials never started", flush=True)
    # Ray catches Ctrl+C itself, saves its state and returns: what is left open in the study tells
    cut = [t for t in study.trials if t.state.name == "RUNNING"] if study else []
    interrupted = bool(cut) or (len(grid) < s.samples and not spent)
    # Ray takes seconds to stop its processes and the export needs none of them: both at once
    stopping = threading.Thread(target=ray.shutdown)
    stopping.start()
    try:
        summary = export(exp)
    except ExportError as e:
        if interrupted:
            return say_interrupted(s, cut, None)
        print(f"nothing to export: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the search itself is safe on disk: say so and how to export again
        print(f"error: the search finished, but its export failed ({type(e).__name__}: {e}); "
              f"retry with: python tune/export.py {s.experiment}", file=sys.stderr)
        return 1
    finally:
        stopping.join()
    if interrupted:
        return say_interrupted(s, cut, summary)
    print_summary(summary, s.experiment)
    return 0


def say_interrupted(s, cut: list, summary: dict | None) -> int:
    """An interrupted search says so, what it has so far and how to go on; not what a finished one says."""
    from tune.cli import shown
    ended = sum(n for st, n in summary["provenance"]["trials"].items() if st != "unfinished") if summary else 0
    so_far = ""
    if summary:
        p = summary["provenance"]
        so_far = (f"; best so far {summary['best'].trial_id} with {p['metric']} {p['value']:.4f} after "
                  f"{p['epochs_trained']} epochs (report.md and leaderboard.csv are up to date)")
    print(f"\ninterrupted: {ended} of {s.samples} trials ended, {len(cut)} cut short{so_far}\n"
          f"continue it with: python tune/run.py --resume {shown(s.experiment)}", file=sys.stderr, flush=True)
    return 130


if __name__ == "__main__":
    sys.exit(run(main))
