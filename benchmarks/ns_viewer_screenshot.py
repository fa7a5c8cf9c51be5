"""A screenshot of nerfstudio's browser viewer showing a run, taken by headless Chromium (issue 23's viewer check).

Starts `sdtoolkit-ns-viewer --load-config RUN/config.yml` on a free port, waits until its page answers HTTP 200,
lets headless Chromium load the page (the viewer's client connects over a websocket and the server renders the
scene into it), saves the screenshot, and stops the viewer. Needs the environment of the README's set-up command 3
(nerfstudio's trainer and viewer) and a Chromium on PATH (`apt-get install chromium`). Usage:

    python benchmarks/ns_viewer_screenshot.py outputs/sds_red_cube/sdtoolkit-sds/i400 --output viewer.png

Exit status 0 when the page answered and the screenshot was written; the script prints both facts and the viewer's
log tail otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, seconds: float, viewer: subprocess.Popen) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and viewer.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a nerfstudio run folder (holds config.yml), or its config.yml")
    parser.add_argument("--output", default="viewer.png", help="where the screenshot is written (a new file)")
    parser.add_argument("--startup-seconds", type=float, default=600, help="how long to wait for the viewer's page")
    parser.add_argument("--render-ms", type=int, default=90000, help="Chromium's virtual time budget for the page")
    parser.add_argument("--size", default="1000,700", help="browser window width,height in pixels")
    args = parser.parse_args()
    config = Path(args.run) / "config.yml" if Path(args.run).is_dir() else Path(args.run)
    output = Path(args.output).resolve()
    if not config.is_file():
        parser.error(f"{str(config)!r} does not exist: give a nerfstudio run folder or its config.yml")
    log = output.with_suffix(".viewer.log")
    for path in (output, log):
        if path.exists():
            parser.error(f"{str(path)!r} exists; give an --output whose file and .viewer.log are both new")
    chromium = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )
    if chromium is None:
        parser.error(
            "no Chromium on PATH (chromium, chromium-browser or google-chrome); install one (apt-get install chromium)"
        )
    viewer_bin = shutil.which("sdtoolkit-ns-viewer") or str(Path(sys.executable).parent / "sdtoolkit-ns-viewer")
    port = free_port()
    started = time.monotonic()
    with open(log, "w") as log_file:
        viewer = subprocess.Popen(
            [viewer_bin, "--load-config", str(config), "--viewer.websocket-port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            if not wait_for_page(url, args.startup_seconds, viewer):
                print(f"the viewer's page {url} did not answer; log tail:\n{log.read_text()[-2000:]}")
                return 1
            print(f"viewer page {url}: HTTP 200 after {time.monotonic() - started:.0f} s")
            command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={args.size}",
                       f"--virtual-time-budget={args.render_ms}", f"--screenshot={output}", url]  # fmt: skip
            subprocess.run(command, capture_output=True, timeout=args.render_ms / 1000 + 300)
        finally:
            viewer.terminate()
            try:
                viewer.wait(30)
            except subprocess.TimeoutExpired:
                viewer.kill()
    if not output.is_file():
        print("Chromium wrote no screenshot")
        return 1
    print(f"screenshot {output} ({output.stat().st_size} bytes), {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
