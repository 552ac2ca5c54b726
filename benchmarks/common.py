"""What every benchmark shares: the project on the path, the real photos if present, JSON results with the machine."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a run that must not replace the committed results (benchmarks/gpu_session.sh --dry-run) writes elsewhere
RESULTS = Path(os.environ.get("IMAGENETTE_TUNE_RESULTS", ROOT / "benchmarks" / "results"))
# Real Imagenette photos sit beside the project on the machines that build it; users pass their own.
REAL_DATA = Path(os.environ.get("IMAGENETTE_REAL", ROOT.parent / "shared" / "data" / "imagenette2-224sq"))


def label(data: str) -> str:
    """A dataset as results name it: no machine's path in what is committed."""
    if Path(data).resolve() == REAL_DATA.resolve():
        return "real photos (imagenette2, squished to 224x224)"
    return Path(data).name if Path(data).is_dir() else data


def save(name: str, payload: dict) -> Path:
    from trainables.provenance import git_commit, machine, versions
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "git_commit": git_commit(), "versions": versions(), **payload}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def real_subset(dst: Path, n_train: int, n_val: int, src: Path = REAL_DATA) -> Path:
    """Links to the first n images of each class of an Imagenette-layout folder (the real photos by default)."""
    src = Path(src).resolve()
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in sorted(os.listdir(src / split)):
            (dst / split / wnid).mkdir(parents=True, exist_ok=True)
            for f in sorted(os.listdir(src / split / wnid))[:n]:
                link = dst / split / wnid / f
                if not link.exists():
                    os.symlink(src / split / wnid / f, link)
    return dst


@contextlib.contextmanager
def local_s3(bucket: str, log: Path | None = None):
    """moto's S3 server on a free port, with `bucket` made: yields (the environment a search's processes get,
    a boto3 client). Ray's workers inherit the driver's environment. The keys are moto's placeholders, not
    credentials. `log` keeps the server's request log (one line per request)."""
    import socket
    import subprocess

    import boto3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(log, "w") if log else subprocess.DEVNULL
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                              stdout=out, stderr=subprocess.STDOUT)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    try:
        for _ in range(100):
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        yield env, client
    finally:
        server.terminate()
        server.wait()
        if log:
            out.close()
