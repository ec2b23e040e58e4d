"""The Gradio demo, running for real: gradio_client drives it (speculative answer equals the
target's, a tree for every step, clear messages for bad uploads, a cancelled request frees the
decoder at once), the tree's drawing, and a headless Chromium opens the page: it stops a running
request with the Stop button and by closing its tab, and it reads and photographs a finished run.

The screenshot in the README comes from the last test:

    MMVSD_DEMO_SCREENSHOT=docs/demo.png pytest -m browser tests/test_demo.py -k photographs
"""

import contextlib
import fcntl
import html
import json
import math
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
SHORT = dict(max_new_tokens=24, depth=3, top_k=2, total=6)  # a request that takes well under a second
LONG_TOKENS = 900  # tiny-random's context is 1024 tokens; in the demo 900 take 7-12 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo(*extra: str):
    """demo/app.py on a free port (tiny-random target, untrained EAGLE drafter unless `extra` says
    otherwise; later settings win): its URL while it runs."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "demo" / "app.py"), "target=tiny-random", "drafter=eagle",
                                f"port={port}", "max_new_tokens=24", *extra],
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
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def demo(request):
    """A running demo (`running_demo`) with the test's parameters as extra settings."""
    with running_demo(*getattr(request, "param", [])) as url:
        yield url


def generate_args(image: Path, prompt: str = "Describe the image.", *, max_new_tokens: int, depth: int, top_k: int,
                  total: int, auto: bool = False) -> tuple:
    """/generate's inputs, in order, at temperature 0 with the untrained EAGLE drafter."""
    from gradio_client import handle_file

    return handle_file(str(image)), prompt, 0.0, depth, top_k, total, auto, max_new_tokens, "eagle"


def blue_image(tmp_path: Path) -> Path:
    Image.new("RGB", (96, 64), (30, 90, 200)).save(tmp_path / "blue.png")
    return tmp_path / "blue.png"


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_the_speculative_answer_equals_the_targets_with_a_tree_per_step(demo, tmp_path):
    from gradio_client import Client

    client = Client(demo, verbose=False)
    alone, alone_stats, spec, coloured, spec_stats, summary, tree, step, trace, plot, status = client.predict(
        *generate_args(blue_image(tmp_path), **SHORT), api_name="/generate")
    assert alone and spec == alone and status == "Done." and "outputs identical" in summary
    assert "tokens/s" in alone_stats and "tokens/s" in spec_stats
    assert len(trace) == step["value"] >= 1 and "draft-tree" in tree and "tree-legend" in tree
    # The coloured answer is the answer: the prefill's token is the target's, then each step's.
    answer = coloured[:coloured.index('<div style="font-size')]
    assert text_of(answer) == spec and answer.count('class="from-target"') >= len(trace)
    for record in trace:  # every verification step: its tree, accepted path and bonus token
        assert record["path"][0] == 0 and len(record["tokens"]) == len(record["parents"]) == len(record["depths"])
        assert set(record["path"]) <= set(range(len(record["tokens"]))) and "bonus_text" in record
    # tree=auto (calibrated at this first request that asks for it): the same answer, and what it chose
    alone, _, spec, _, _, summary, *_, status = client.predict(
        *generate_args(blue_image(tmp_path), **SHORT, auto=True), api_name="/generate")
    assert spec == alone and status == "Done." and "auto drafted trees of" in summary and "steps plainly" in summary
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    *_, status = client.predict(*generate_args(tmp_path / "broken.png", **SHORT), api_name="/generate")
    assert status.startswith("**Cannot run:**") and "not an image file" in status
    (tmp_path / "big.png").write_bytes(bytes(21 << 20))  # the server refuses it (the page, before sending it)
    with (tmp_path / "big.png").open("rb") as big:
        response = httpx.post(f"{demo}gradio_api/upload", files={"files": big}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text


def test_a_released_drafter_runs_in_the_demo(tmp_path, tiny_target):
    """An author's checkpoint (MSD's layout, drafter=FOLDER) drafts in the demo, lossless."""
    from gradio_client import Client
    from test_released_drafters import released

    released(tiny_target, "msd", tmp_path / "msd")
    with running_demo(f"drafter={tmp_path / 'msd'}") as url:
        alone, _, spec, *_, status = Client(url, verbose=False).predict(
            *generate_args(blue_image(tmp_path), **SHORT)[:-1], f"trained: {tmp_path / 'msd'}", api_name="/generate")
    assert alone and spec == alone and status == "Done."


def test_serving_beyond_this_machine_is_warned_about(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "demo" / "app.py"), "host=0.0.0.0", f"target={tmp_path / 'none'}"],
                         capture_output=True, text=True, timeout=300)
    warning, error = run.stderr.splitlines()
    assert warning.startswith("warning: host=0.0.0.0 serves the demo to the network") and run.returncode == 2
    assert error.startswith("error: target") and "no such folder" in error


@pytest.mark.parametrize("argv, message", [
    (["device=cuda"], "error: device cuda: "),
    (["port=70000"], "error: port must be in 1..65535"),
    (["example=9"], "error: example must be in 0..4"),
    (["max_new_tokens=0"], "error: max_new_tokens must be >= 1"),
    (["tree=bushy"], "error: tree must be a preset"),
    (["--target", "toy-s"], "error: expected key=value, got '--target'"),
])
def test_bad_settings_stop_the_demo_before_it_loads_a_model(argv, message):
    run = subprocess.run([sys.executable, str(ROOT / "demo" / "app.py"), *argv], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and run.stderr.startswith(message) and run.stderr.count("\n") == 1, run.stderr


@pytest.fixture(scope="module")
def app():
    """The demo's module, for its drawing functions."""
    import mmvsd.demo

    return mmvsd.demo


def test_the_tree_drawing_shows_kinds_probabilities_and_readable_tokens(app):
    # root -> " cat" (accepted) -> "</s>" (rejected) and the bonus " "; root -> "\n" (rejected) -> " dog"
    step = {"step": 1, "tokens": [5, 6, 7, 8, 9], "parents": [-1, 0, 0, 1, 2], "depths": [0, 1, 1, 2, 2],
            "scores": [0.0, math.log(0.8), math.log(0.1), math.log(0.4), math.log(0.09)],
            "text": [" the", " cat", "\n", "</s>", " dog"], "path": [0, 1], "bonus_text": " "}
    svg = app.tree_svg(step)
    kinds = re.findall(r'<g class="node (\w+)"><title>([^<]*)</title><rect x="([\d.]+)" y="([\d.]+)"', svg)
    assert [k[0] for k in kinds] == ["root", "accepted", "rejected", "rejected", "unreached", "bonus"]
    assert len({(x, y) for *_, x, y in kinds}) == 6  # no two nodes on one spot
    rows = [y for *_, y in kinds]
    assert rows[0] == rows[1] == rows[5]  # the accepted path and the bonus token on one row
    assert "draft probability 50.0%" in kinds[3][1] and "draft probability 90.0%" in kinds[4][1]
    assert all(f">{mark}</text>" in svg for mark in ("\u2423the", "\u2423cat", "\u23ce", "&lt;/s&gt;", "\u2423"))
    assert 'style="width:100%' in svg and "viewBox" in svg  # scales to the panel: never scrolls sideways
    panel = app.tree_panel([step], 0)
    assert "step 1 of 1: 4 drafted, 1 accepted + bonus" in panel and 'class="tree-legend"' in panel

    class Tokenizer:  # like sentencepiece: "\u2581the" decodes alone to "the"; a padding token to ""
        def decode(self, ids):
            return {1: "the", 2: ""}[ids[0]]

        def convert_ids_to_tokens(self, token):
            return {1: "\u2581the", 2: "<pad>"}[token]

    assert app.token_text(Tokenizer(), 1) == " the" and app.token_text(Tokenizer(), 2) == "<pad>"


def own_seconds(client, image: Path) -> float:
    """How long the short request takes on an idle demo (the second of two runs: the first warms up)."""
    for _ in range(2):
        start = time.perf_counter()
        client.predict(*generate_args(image, **SHORT), api_name="/generate")
    return time.perf_counter() - start


def queue_behind(client, image: Path):
    """Submit the short request and return its job once it waits in the demo's queue."""
    from gradio_client.utils import Status

    job = client.submit(*generate_args(image, **SHORT), api_name="/generate")
    deadline = time.time() + 30
    while job.status().code != Status.IN_QUEUE:
        assert time.time() < deadline and not job.done(), job.status()
        time.sleep(0.05)
    return job


def seconds_to_finish(job) -> float:
    start = time.perf_counter()
    assert job.result(timeout=60)[-1] == "Done."
    return time.perf_counter() - start


@pytest.mark.parametrize("demo", [[f"max_new_tokens={LONG_TOKENS}"]], indirect=True)
def test_a_cancelled_request_frees_the_decoder_for_the_next_one(demo, tmp_path):
    from gradio_client import Client

    client = Client(demo, verbose=False)
    image = blue_image(tmp_path)
    own = own_seconds(client, image)
    long = client.submit(*generate_args(image, max_new_tokens=LONG_TOKENS, depth=12, top_k=8, total=48),
                         api_name="/generate")
    deadline = time.time() + 60
    while not any(out[-1].startswith("Speculative") for out in long.outputs()):
        assert time.time() < deadline and not long.done()
        time.sleep(0.05)
    short = queue_behind(client, image)
    long.cancel()
    waited = seconds_to_finish(short)
    assert waited < own + 1.5, f"the next request took {waited:.1f} s, {own:.1f} s on its own"


# ------------------------------------------------------------------ in a browser


class Chromium:
    """Headless Chromium driven over the DevTools protocol through a pipe: with
    --remote-debugging-pipe it reads commands on fd 3 and writes replies and events on fd 4, each
    a JSON text ended by a NUL byte. No dependency beyond the browser itself."""

    def __init__(self, url: str):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "the browser tests need Debian's chromium (apt-get install chromium; .ci/run installs it)"
        reads, self.commands = os.pipe()
        self.replies, writes = os.pipe()
        # Copies above fd 9, so that bash's redirections onto fds 3 and 4 cannot overwrite them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (reads, writes)]
        for fd in (reads, writes):
            os.close(fd)
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-', "bash", chromium,
             "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--window-size=1400,1100", "--remote-debugging-pipe", url],
            pass_fds=high, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)
        self.buffer, self.last_id = b"", 0
        self.page = next(t["targetId"] for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=self.page, flatten=True)["sessionId"]

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:  # events and replies to other sessions come through the same pipe
            while b"\0" not in self.buffer:
                assert select.select([self.replies], [], [], 60)[0], f"chromium did not answer {method}"
                chunk = os.read(self.replies, 1 << 16)
                assert chunk, "chromium exited"
                self.buffer += chunk
            text, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(text)
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", self.session, expression=expression, awaitPromise=True,
                           returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not self.js(f"!!({expression})"):
            assert time.time() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def upload(self, path: Path) -> None:
        """Hand a file to the page's (first) file input, as choosing it in the file dialog does."""
        node = self.send("Runtime.evaluate", self.session, expression="document.querySelector('input[type=file]')")
        self.send("DOM.setFileInputFiles", self.session, files=[str(path)], objectId=node["result"]["objectId"])

    def set_slider(self, label: str, value: int) -> None:
        """Type a value into a slider's number box (gradio reads it on input)."""
        self.js(f"""(() => {{ const box = document.querySelector('input[aria-label="number input for {label}"]');
            box.value = {value}; box.dispatchEvent(new Event('input', {{bubbles: true}})); }})()""")

    def click(self, text: str) -> None:
        self.js(f"[...document.querySelectorAll('button')].find(b => b.textContent.trim() === {text!r}).click()")

    def shows(self, text: str) -> str:
        return f"document.body.innerText.includes({text!r})"

    def close_tab(self) -> None:
        self.send("Target.closeTarget", targetId=self.page)

    def close(self) -> None:
        os.close(self.commands)
        self.process.wait(timeout=30)
        os.close(self.replies)


@pytest.fixture
def page(demo):
    """The demo's page in headless Chromium."""
    chromium = Chromium(demo)
    yield chromium
    chromium.close()


@pytest.mark.browser
@pytest.mark.parametrize("demo", [[f"max_new_tokens={LONG_TOKENS}", "prompt=Describe the image.", "tree=narrow"]],
                         indirect=True)
def test_stop_and_a_closed_tab_free_the_decoder_for_the_next_request(demo, page, tmp_path):
    from gradio_client import Client

    client = Client(demo, verbose=False)
    image = blue_image(tmp_path)
    own = own_seconds(client, image)
    page.wait_for("document.querySelector('input[type=file]')")
    page.upload(image)  # decoded to the full LONG_TOKENS (an example image may end at EOS sooner)
    page.wait_for("document.querySelector('.file-preview')")
    # the largest fixed trees (tree=narrow starts the page with auto off: auto would decode this
    # untrained drafter's answer plainly, in a few seconds, before Stop could be pressed)
    for label, value in (("tree.depth", 12), ("tree.top_k", 8), ("tree.total_tokens", 48)):
        page.set_slider(label, value)
    for stop_by in ("Stop", "closing the tab"):
        page.click("Generate")
        page.wait_for(page.shows("Speculative: generating"))
        short = queue_behind(client, image)
        if stop_by == "Stop":
            page.click("Stop")
        else:
            page.close_tab()
        waited = seconds_to_finish(short)
        assert waited < own + 1.5, f"after {stop_by}, the next request took {waited:.1f} s, {own:.1f} s on its own"
        if stop_by == "Stop":
            page.wait_for(page.shows("Stopped."))
            assert page.js(page.shows("48 drafted"))
            assert page.js("(svg => svg.getBoundingClientRect().width <= svg.parentElement.clientWidth)"
                           "(document.querySelector('svg.draft-tree'))"), "the tree scrolls sideways"


def example_truth(index: int):
    """The ground truth of the demo's example `index`, drawn again as builtin_requests(seed=7) draws it."""
    from mmvsd.data.requests import builtin_requests
    from mmvsd.toyworld.data import random_sample

    rng = random.Random("bench-7")
    sample = [random_sample(rng, 336) for _ in range(index + 1)][index]
    assert sample.image.tobytes() == builtin_requests(index + 1, seed=7)[index].image.tobytes()  # the same image
    return sample.truth


@pytest.mark.browser
@pytest.mark.parametrize("demo", [["target=toy-m", "drafter=toy-m-msd", "max_new_tokens=96", "autorun=true",
                                   "example=4", "prompt=What color is the background?", "tree=narrow"]], indirect=True)
def test_a_headless_browser_photographs_a_correct_answer_with_its_tree(demo, tmp_path):
    """toy-m answers this example's question right (most of its long descriptions are wrong):
    the README's screenshot shows a true answer, its tree, legend and coloured tokens."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser tests need Debian's chromium (apt-get install chromium; .ci/run installs it)"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--window-size=1400,1330", "--virtual-time-budget=600000"]
    dom = subprocess.run([*flags, "--dump-dom", demo], capture_output=True, text=True, timeout=300).stdout
    assert 'class="draft-tree"' in dom and "outputs identical" in dom  # the example ran, its tree drawn
    assert 'class="tree-legend"' in dom and 'class="node rejected"' in dom
    # the last step ends on the target's bonus token, or on a drafted </s> it accepted (then no bonus)
    assert 'class="node bonus"' in dom or 'class="node accepted"' in dom
    assert "draft probability" in dom  # the nodes' tooltips
    answer = re.search(r'<div class="coloured-answer"><div[^>]*>(.*?)</div>', dom).group(1)
    assert 'class="from-draft"' in answer and 'class="from-target"' in answer
    assert text_of(answer).strip() == example_truth(4).background == "light blue"
    shot = Path(os.environ.get("MMVSD_DEMO_SCREENSHOT") or tmp_path / "demo.png").resolve()
    subprocess.run([*flags, f"--screenshot={shot}", demo], capture_output=True, timeout=300)
    assert shot.stat().st_size > 20_000
