"""The Gradio demo, running for real: gradio_client drives it (speculative answer equals the
target's, a tree for every step, clear messages for bad uploads), and a headless Chromium opens
the page, runs an example and draws the tree."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo(request):
    """Start demo/app.py (tiny-random target, untrained EAGLE drafter) and yield its URL."""
    port = free_port()
    extra = getattr(request, "param", [])
    process = subprocess.Popen([sys.executable, str(ROOT / "demo" / "app.py"), "--target", "tiny-random",
                                "--drafter", "eagle", "--port", str(port), "--max-new-tokens", "24", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    assert process.poll() is None, process.stdout.read()
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_speculative_answer_equals_the_targets_with_a_tree_per_step(demo, tmp_path):
    from gradio_client import Client, handle_file

    Image.new("RGB", (96, 64), (30, 90, 200)).save(tmp_path / "blue.png")
    client = Client(demo, verbose=False)
    alone, alone_stats, spec, spec_stats, summary, tree, step, trace, plot, status = client.predict(
        handle_file(str(tmp_path / "blue.png")), "Describe the image.", 0.0, 3, 2, 6, "eagle", api_name="/generate")
    assert alone and spec == alone and status == "Done." and "outputs identical" in summary
    assert "tokens/s" in alone_stats and "tokens/s" in spec_stats
    assert len(trace) == step["value"] >= 1 and "draft-tree" in tree
    for record in trace:  # every verification step: its tree, accepted path and bonus token
        assert record["path"][0] == 0 and len(record["tokens"]) == len(record["parents"]) == len(record["depths"])
        assert set(record["path"]) <= set(range(len(record["tokens"]))) and "bonus_text" in record
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    *_, status = client.predict(handle_file(str(tmp_path / "broken.png")), "Describe.", 0.0, 3, 2, 6, "eagle",
                                api_name="/generate")
    assert status.startswith("**Cannot run:**") and "not an image file" in status


@pytest.mark.browser
@pytest.mark.parametrize("demo", [["--autorun"]], indirect=True)
def test_a_headless_browser_sees_the_draft_tree(demo, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser test needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--window-size=1400,1300", "--virtual-time-budget=600000"]
    dom = subprocess.run([*flags, "--dump-dom", demo], capture_output=True, text=True, timeout=300).stdout
    assert 'class="draft-tree"' in dom and "outputs identical" in dom  # the example ran, its tree drawn
    shot = tmp_path / "demo.png"
    subprocess.run([*flags, f"--screenshot={shot}", demo], capture_output=True, timeout=300)
    assert shot.stat().st_size > 20_000
