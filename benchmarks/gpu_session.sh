#!/usr/bin/env bash
# One GPU session, prepared on the CPU so that no device time goes to set-up (issue 19).
#
#   bash benchmarks/gpu_session.sh --part throughput [--bundle .devicebundle] [--out DIR]
#   bash benchmarks/gpu_session.sh --part leaderboard --data DIR [--out DIR] [--leaderboard-s 420]
#   bash benchmarks/gpu_session.sh --dry-run [--out DIR]     # the same steps on the CPU, tiny (tests run it)
#
# The GPU machine has torch but not fastai, Ray or Optuna, and a call carries at most 64 MiB: the wheel
# bundle (../shared/tools/device-bundle.sh, about 39 MB) and a small copy of the real photos
# (tune/small_copy.py at 128 px and --quality 70: 48 MiB; 66.5 MiB at its default 85) cannot travel
# together. So the plan is two calls, the second made at once after the first (the machine stays warm
# about 30 s), while the first one's install in /tmp/site is still there. On an H100 (2026-12-05):
#   1. --part throughput (carries the bundle): install, imports, Ray's start, GPU,
#      benchmarks/device_throughput.py on generated images: 168 s, 195 s with the machine's start;
#   2. --part leaderboard (carries the photos): imports (from the first call's install), GPU, the
#      leaderboard cell, cut to fit: one seed, 8 trials, the ladder's first 2 rungs (146 s), the search
#      (3 min alone) and the searched config's 2 runs (not yet timed): a 7-minute limit, --leaderboard-s
#      to fit what is left.
# The two calls of the device tool, from a checkout where `../shared/tools/device-bundle.sh .devicebundle` and
# `python tune/small_copy.py ../shared/data/imagenette2-224sq .gpudata/imagenette-128 --size 128 --quality 70`
# have run:
#   run(carry=[".devicebundle"], timeout_s=300, command="bash benchmarks/gpu_session.sh --part throughput --out $OUT")
#   run(carry=[".gpudata"], timeout_s=480,
#       command="bash benchmarks/gpu_session.sh --part leaderboard --data .gpudata/imagenette-128 --out $OUT")
# The tool returns at most 8 files: session.tar.gz holds everything the call wrote.
# Each step runs under a time limit and writes as it finishes, so a step cut short leaves what the others
# measured. Everything lands in one folder (--out, default $OUT or gpu-session/): session.log, steps.jsonl
# (one line per step: name, status, seconds), each step's log and the benchmarks' JSON (results/).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
part=all dry=0 bundle="$here/.devicebundle" data="" out="${OUT:-$here/gpu-session}" lb_limit=420
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --part) part=$2; shift ;;
    --bundle) bundle=$2; shift ;;
    --data) data=$2; shift ;;
    --out) out=$2; shift ;;
    --leaderboard-s) lb_limit=$2; shift ;;   # what the session has left once the first call returned
    *) echo "error: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done
case "$part" in all|throughput|leaderboard) ;; *) echo "error: --part throughput|leaderboard|all" >&2; exit 2 ;; esac
mkdir -p "$out/results" || exit 2
out=$(cd "$out" && pwd)
export IMAGENETTE_TUNE_RESULTS="$out/results" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
cd "$here"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/session.log"; }
die() { log "error: $*"; exit 1; }
step() {  # step NAME SECONDS command...: the command's output in NAME.log, its outcome in steps.jsonl
  local name=$1 limit=$2 start rc status
  shift 2
  log "step $name (at most ${limit} s): $*"
  start=$(date +%s)
  timeout --signal=INT --kill-after=30 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status="cut short at ${limit} s" ;; *) status="failed (exit $rc)" ;; esac
  printf '{"step": "%s", "status": "%s", "seconds": %d}\n' "$name" "$status" $(( $(date +%s) - start )) \
    >> "$out/steps.jsonl"
  log "step $name: $status; the end of its log:"
  tail -n 5 "$out/$name.log" | tee -a "$out/session.log"
}

# 1. the imports first, failing fast: from here, from an earlier call's /tmp/site, or from the bundle
export PYTHONPATH="/tmp/site:$here${PYTHONPATH:+:$PYTHONPATH}"
# The bundle has no pydantic, which Ray 2.60 imports with `ray.tune` only for Ray Train's v2 API; Tune's
# function trainables run without that API (a search ran so on an H100, 2026-12-05).
python3 -c 'import pydantic' 2> /dev/null || export RAY_TRAIN_V2_ENABLED=0
imports() { python3 -c 'import fastai, optuna, ray, ray.tune, torch, tensorboard' 2> "$out/imports.err"; }
if ! imports; then
  [ -f "$bundle/ray.tar.xz" ] || die "fastai, Ray or Optuna missing and no bundle at $bundle (the first call carries it): $(tail -n 1 "$out/imports.err")"
  log "installing the bundle from $bundle into /tmp/site"
  # the bundle unzips Ray's wheel with Python's zipfile, which drops the exec bits of gcs_server and raylet
  mkdir -p /tmp/site && tar -xJf "$bundle/ray.tar.xz" -C /tmp/site \
    && find /tmp/site/ray/core/src/ray -type f -exec chmod a+x {} + \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$bundle"/*.whl \
    || die "the bundle did not install"
  imports || die "the bundle installed but does not import: $(tail -n 1 "$out/imports.err")"
fi
log "imports: $(python3 -c 'import fastai, optuna, ray, torch; print("torch", torch.__version__, "fastai", fastai.__version__, "ray", ray.__version__, "optuna", optuna.__version__)')"
# Ray's own processes start (a search would find out only minutes later, after the ladder's runs)
python3 -c 'import ray; ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); ray.shutdown()' \
  > "$out/ray.err" 2>&1 || die "Ray does not start: $(tail -n 1 "$out/ray.err")"
log "Ray starts"

# 2. the device
if [ $dry = 1 ]; then
  log "dry run: the CPU, tiny sizes"
else
  python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0))' \
    > "$out/device.txt" 2>&1 || die "no GPU: $(tail -n 1 "$out/device.txt")"
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1
  log "device: $(cat "$out/device.txt")"
fi

# 3. the data path against the model's bound, and packing
if [ "$part" != leaderboard ]; then
  if [ $dry = 1 ]; then
    step throughput 300 python3 benchmarks/device_throughput.py --arch tiny --size 32 --bs 16 --seconds 2 \
      --packing 1 --data synthetic:train=8,val=4,px=48,seed=19
  else   # 10,000 generated images: two epochs per path in seconds on an H200, generated on its 16 cores
    step throughput 240 python3 benchmarks/device_throughput.py --arch xresnet50 --size 128 --bs 128 --seconds 15 \
      --packing 1 2 4 --data synthetic:train=1000,val=100,px=160,seed=1
  fi
fi

# 4. the leaderboard cell, cut to fit the session
if [ "$part" != throughput ]; then
  if [ $dry = 1 ]; then
    step leaderboard 400 python3 benchmarks/real_quality.py --space smoke --data synthetic:train=12,val=4,px=48,seed=19 \
      --seeds 1 --samples 2 --rungs 1
  else
    [ -n "$data" ] && [ -d "$data" ] || die "--part leaderboard needs --data: the small copy of the real photos"
    step leaderboard "$lb_limit" python3 benchmarks/real_quality.py --space leaderboard --data "$data" --gpus-per-trial 0.25 \
      --seeds 1 --samples 8 --rungs 2
  fi
fi
log "done: $(wc -l < "$out/steps.jsonl") step(s) in $out; all of it in $out/session.tar.gz"
pack=$(mktemp) && tar -czf "$pack" -C "$out" --exclude=session.tar.gz . && mv "$pack" "$out/session.tar.gz"
