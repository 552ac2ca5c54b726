"""What a person sees in TensorBoard on a finished search, in a real browser: python benchmarks/tensorboard_view.py

Runs a smoke search (or takes --experiment results/<name>), starts `tensorboard --logdir` on it bound to
127.0.0.1, reads the HParams table through TensorBoard's HTTP API (columns, every trial, its status), and
takes a screenshot of the HParams table with headless Chromium (Debian's `chromium`; its software WebGL
draws no scalar curves, so the scalars are checked through the API only). Writes
docs/tensorboard_hparams.png and benchmarks/results/tensorboard_view.json.
Too heavy for the test suite (a browser); tests/test_search.py checks the same table through the API.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save  # noqa: E402
from tune.cli import Parser, UsageError, run  # noqa: E402


def ask(port: int, path: str, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def screenshot(browser: str, url: str, out: Path, size: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:   # a fresh profile: TensorBoard's settings at their defaults
        subprocess.run([browser, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                        "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=20000",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)


def main(argv=None):
    p = Parser(prog="benchmarks/tensorboard_view.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="a finished search's folder (default: run a smoke search first)")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where the screenshots go (default docs/)")
    args = p.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise UsageError("no chromium here: apt-get install chromium")
    if args.experiment:
        exp = Path(args.experiment).resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="tb-view-"))
        subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--name", "smoke",
                        "--results", str(work)], check=True, cwd=work)
        exp = work / "smoke"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    board = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(exp), "--host",
                              "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                ask(port, "/data/plugin/scalars/tags")
                break
            except OSError:
                time.sleep(1)
        time.sleep(3)   # let it read every run
        experiment = ask(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = ask(port, "/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 1000,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "status", "includeInResult": True}]})["sessionGroups"]
        out = Path(args.out)
        screenshot(browser, f"http://127.0.0.1:{port}/#hparams", out / "tensorboard_hparams.png", "1600,900")
    finally:
        board.terminate()
        board.wait(30)
    statuses = {}
    for g in groups:
        statuses[g["hparams"]["status"]] = statuses.get(g["hparams"]["status"], 0) + 1
    save("tensorboard_view", {"experiment": exp.name, "columns": [h["name"] for h in experiment["hparamInfos"]],
                              "metrics": [m["name"]["tag"] for m in experiment["metricInfos"]],
                              "sessions": len(groups), "statuses": statuses,
                              "screenshot": "docs/tensorboard_hparams.png"})
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
