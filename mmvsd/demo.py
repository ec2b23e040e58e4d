"""`mmvsd demo` (or `python demo/app.py`): the target alone and speculative decoding side by side,
with every step's draft tree drawn as it is verified.

    mmvsd demo                                          # toy-m + its shipped MSD drafter on http://127.0.0.1:7860
    mmvsd demo target=toy-s drafter=eagle               # any target id, any drafter folder or kind
    mmvsd demo target=llava-hf/llava-1.5-7b-hf drafter=runs/llava7b_msd/drafter device=cuda
    mmvsd demo host=0.0.0.0 port=8080                   # listen beyond this machine (warns on stderr)
    mmvsd demo autorun=true example=4 prompt="What color is the background?"   # docs/demo.png

With no `drafter` it uses the MSD drafter shipped for the toy target (toy-m-msd, toy-s-msd); for
any other target it trains one under $MMVSD_HOME/demo/ the first time (recipe toy_msd, progress
in the terminal).

Stop cancels a request within one decoding step, as does closing the browser tab; the next queued
request then starts at once. Uploads are limited to 20 MB (gradio refuses larger files) and go
through mmvsd.images.load_image, whose one-line message the page shows for a broken file.
"""

from __future__ import annotations

import functools
import html
import math
import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import astuple
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from mmvsd import cli, metrics  # noqa: E402
from mmvsd.checks import check_device, mmvsd_home  # noqa: E402
from mmvsd.config import DEMO_EXAMPLES, DecodeConfig, DemoConfig, TreeConfig  # noqa: E402
from mmvsd.decoding.speculative import autoregressive_generate, speculative_generate, tree_chooser  # noqa: E402
from mmvsd.drafters import DRAFTERS, load_drafter  # noqa: E402
from mmvsd.errors import UserError  # noqa: E402
from mmvsd.images import load_image  # noqa: E402
from mmvsd.models import load_target  # noqa: E402

UPDATE_EVERY_S = 0.15
MAX_UPLOAD = "20mb"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_drafter(target: str) -> str:
    """The MSD drafter shipped for `target` (toy-s, toy-m), or one trained the first time (resumable)."""
    from mmvsd.drafters import shipped_drafters
    from mmvsd.train import train_once

    if f"{target}-msd" in shipped_drafters():
        return f"{target}-msd"
    out = mmvsd_home() / "demo" / f"{target}_msd"
    if not (out / "drafter" / "model.safetensors").is_file():
        print(f"training the demo's MSD drafter for {target} in {out} (once, ~2 min)", file=sys.stderr)
    return str(train_once(["recipe=toy_msd", f"target={target}"], out))


def example_images(folder: Path, n: int = DEMO_EXAMPLES) -> list[str]:
    """Fresh toy-world scenes and charts for the Examples row."""
    from mmvsd.data.requests import builtin_requests

    paths = []
    for request in builtin_requests(n, seed=7):
        path = folder / f"{request.name}.png"
        request.image.save(path)
        paths.append(str(path))
    return paths


# Decoding runs in the main thread. torch's CPU thread pool is tied to the thread that first used
# it: the same toy-m loop ran at 242 tokens/s in the main thread and at 83 in any other thread
# (both pools then compete for the cores), and gradio runs handlers in worker threads. So the
# main thread, once the server is up, serves the decoding jobs that the handlers queue here.
JOBS: queue.Queue = queue.Queue()


def in_main_thread(steps):
    """Iterate a step generator in the main thread, handing each step over through a queue.

    Gradio closes the handler's generator when the request is cancelled (Stop) or its browser tab
    goes away; this generator is then closed with it and its `finally` stops the worker after the
    step it is computing, so the next queued request gets the main thread at once."""
    if threading.current_thread() is threading.main_thread():  # e.g. --autorun, before the server
        yield from steps
        return
    handover: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            for step in steps:
                if stop.is_set():
                    break
                handover.put(step)
        except BaseException as e:  # re-raised in the handler's thread
            handover.put(e)
        handover.put(None)

    JOBS.put(work)
    try:
        while (item := handover.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def serve_decoding_jobs() -> None:
    while True:
        JOBS.get()()


# ------------------------------------------------------------------ tokens


def token_text(tokenizer, token: int) -> str:
    """A token's own text: special tokens by name (</s>), and the leading space that sentencepiece
    drops when it decodes a token alone put back."""
    text = tokenizer.decode([token])
    name = tokenizer.convert_ids_to_tokens(token)
    if not text:
        return name
    return " " + text if name.startswith("\u2581") and not text.startswith(" ") else text


def visible(text: str, limit: int = 8) -> str:
    """Whitespace made visible (␣ for a space, ⏎ for a newline, ⇥ for a tab), cut to `limit` characters."""
    text = text.replace(" ", "\u2423").replace("\n", "\u23ce").replace("\t", "\u21e5")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def added_text(target, before: list[int], new: list[int]) -> str:
    """The text that `new` adds to an answer ending in `before`: decoded after a few tokens of
    context, since a token can read differently at the start of a text (sentencepiece's space)."""
    context = before[-4:]
    return target.decode(context + new)[len(target.decode(context)):]


def step_spans(target, before: list[int], step) -> list[tuple[str, str]]:
    """A step's text, split by origin: the draft tokens it accepted, then the target's own token
    (each step's bonus; the prefill's first token)."""
    drafted = min(step.accepted, len(step.tokens))
    spans = [(added_text(target, before, step.tokens[:drafted]), "from-draft"),
             (added_text(target, before + step.tokens[:drafted], step.tokens[drafted:]), "from-target")]
    return [(text, origin) for text, origin in spans if text]


def step_record(tokenizer, step, number: int, emitted: str) -> dict:
    """A verification step as JSON: its tree, accepted path and bonus token (None when the answer
    ended on an accepted token and the bonus was not emitted)."""
    record = step.tree.to_dict(lambda ids: token_text(tokenizer, ids[0]))
    bonus = step.tokens[step.accepted] if len(step.tokens) > step.accepted else None
    return {"step": number, **record, "path": list(step.path),
            "bonus_text": None if bonus is None else token_text(tokenizer, bonus), "emitted": emitted}


# ------------------------------------------------------------------ drawing

NODE_W, NODE_H, COL_W, ROW_H, PAD = 62, 22, 70, 28, 6
KINDS = {  # a node's kind: its colour and its line in the legend
    "root": ("#495057", "root: the last committed token"),
    "accepted": ("#2b8a3e", "drafted, accepted"),
    "rejected": ("#e03131", "drafted, rejected: the target chose another token"),
    "unreached": ("#adb5bd", "drafted, not verified: below a rejected token"),
    "bonus": ("#f08c00", "the target's bonus token"),
}
ORIGINS = {"from-draft": ("#b2f2bb", "accepted from the draft"),
           "from-target": ("#ffd8a8", "the target's own token (each step's bonus, and the first)")}


def node_kinds(parents: list[int], path: list[int]) -> list[str]:
    on_path = set(path)
    return ["root" if parent < 0 else "accepted" if i in on_path else "rejected" if parent in on_path
            else "unreached" for i, parent in enumerate(parents)]


def tree_rows(parents: list[int], first: set[int]) -> list[int]:
    """A row for each node of a tree drawn left to right: a node's first child continues its row
    (a child in `first` goes first: the accepted path then runs along row 0) and each further
    child opens a row below all rows used so far, so that branches never cross."""
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(node)
    rows, next_row = [0] * len(parents), 1

    def place(node: int, row: int) -> None:
        nonlocal next_row
        rows[node] = row
        for k, child in enumerate(sorted(children[node], key=lambda c: c not in first)):
            if k:
                row, next_row = next_row, next_row + 1
            place(child, row)

    place(0, 0)
    return rows


def tree_svg(step: dict) -> str:
    """One step's draft tree, left to right by depth, the accepted path on the top row ending in
    the target's bonus token. A node's fill is as dark as the drafter was sure of it; its tooltip
    gives the probability."""
    parents, depths, texts, scores = step["parents"], list(step["depths"]), list(step["text"]), step["scores"]
    kinds = node_kinds(parents, step["path"])
    probs = [1.0] + [math.exp(scores[i] - scores[p]) for i, p in enumerate(parents) if p >= 0]
    first = set(step["path"])
    if step["bonus_text"] is not None:  # a child of the last accepted node, continuing the top row
        last = step["path"][-1]
        first.add(len(parents))
        parents, kinds = parents + [last], kinds + ["bonus"]
        depths, texts, probs = depths + [depths[last] + 1], texts + [step["bonus_text"]], probs + [1.0]
    rows = tree_rows(parents, first)
    width, height = (max(depths) + 1) * COL_W + 2 * PAD, (max(rows) + 1) * ROW_H + 2 * PAD
    # As wide as the panel, so that a deep tree shrinks to fit; a small one grows by at most a quarter.
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="draft-tree" viewBox="0 0 {width} {height}" '
             f'style="width:100%;max-width:{width * 1.25:.0f}px;height:auto" font-family="monospace" font-size="11">']
    x = [PAD + d * COL_W for d in depths]
    y = [PAD + r * ROW_H for r in rows]
    for i, parent in enumerate(parents):
        if parent >= 0:  # an elbow from the parent's right side to the child's left side
            mid = x[parent] + NODE_W + (COL_W - NODE_W) / 2
            parts.append(f'<path d="M{x[parent] + NODE_W} {y[parent] + NODE_H / 2} H{mid} V{y[i] + NODE_H / 2} '
                         f'H{x[i]}" fill="none" stroke="{KINDS[kinds[i]][0]}"/>')
    for i, kind in enumerate(kinds):
        colour, meaning = KINDS[kind]
        drafted = kind in ("accepted", "rejected", "unreached")
        tip = f"{texts[i]!r}: {meaning}" + (f", draft probability {probs[i]:.1%}" if drafted else "")
        fill = 0.1 + 0.7 * probs[i] if drafted else 0.5 if kind == "bonus" else 0.15
        dash = ' stroke-dasharray="3 2"' if kind == "unreached" else ""
        parts.append(f'<g class="node {kind}"><title>{html.escape(tip)}</title><rect x="{x[i]}" y="{y[i]}" '
                     f'width="{NODE_W}" height="{NODE_H}" rx="4" fill="{colour}" fill-opacity="{fill:.2f}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/><text x="{x[i] + NODE_W / 2}" y="{y[i] + 15}" '
                     f'text-anchor="middle">{html.escape(visible(texts[i]))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def swatch(colour: str, fill: str, label: str) -> str:
    return (f'<span style="margin-right:14px;white-space:nowrap"><span style="display:inline-block;'
            f'width:12px;height:12px;border:2px solid {colour};background:{fill};border-radius:3px;'
            f'vertical-align:middle"></span> {html.escape(label)}</span>')


def tree_legend() -> str:
    items = "".join(swatch(colour, colour + "55", meaning) for colour, meaning in KINDS.values())
    return (f'<div class="tree-legend" style="font-size:13px;line-height:1.8">{items}<br>Darker fill: the drafter '
            "was surer of the token (hover a node for its probability). ␣ is a space, ⏎ a newline. Candidates "
            "beyond <i>total tokens</i> were pruned before verification and are not drawn.</div>")


def tree_panel(trace: list[dict], index: int) -> str:
    if not trace:
        return "<p>The draft tree of each speculative step appears here.</p>"
    step = trace[min(index, len(trace) - 1)]
    accepted = len(step["path"]) - 1
    ending = " + bonus" if step["bonus_text"] is not None else ", no bonus (the answer ended)"
    caption = f"step {step['step']} of {len(trace)}: {len(step['tokens']) - 1} drafted, {accepted} accepted{ending}"
    return f'<div><p class="tree-caption"><b>{caption}</b></p>{tree_svg(step)}{tree_legend()}</div>'


def coloured_answer(spans: list[tuple[str, str]]) -> str:
    """The speculative answer with each token coloured by where it came from."""
    if not spans:
        return ""
    legend = "".join(swatch(fill, fill, label) for fill, label in ORIGINS.values())
    text = "".join(f'<span class="{origin}" style="background:{ORIGINS[origin][0]}">{html.escape(piece)}</span>'
                   for piece, origin in spans)
    return (f'<div class="coloured-answer"><div style="white-space:pre-wrap;line-height:1.6">{text}</div>'
            f'<div style="font-size:13px;margin-top:4px">{legend}</div></div>')


def acceptance_plot(trace: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = max((max(s["depths"]) for s in trace), default=0)
    counts = [sum(len(s["path"]) - 1 >= d for s in trace) / len(trace) for d in range(1, depth + 1)] if trace else []
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(range(1, len(counts) + 1), counts, color="#2e9e4f")
    ax.set_xlabel("draft depth")
    ax.set_ylabel("steps accepting this deep")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    plt.close(fig)
    return fig


# ------------------------------------------------------------------ the app

OUTPUTS = ("alone_text", "alone_stats", "spec_text", "spec_coloured", "spec_stats", "summary", "tree", "step",
           "trace", "plot", "status", "replay")


def view(**values) -> tuple:
    """The handler's outputs in OUTPUTS order; those not given are shown empty."""
    empty = {"tree": tree_panel([], 0), "step": gr.update(maximum=1, value=0), "trace": [], "replay": [],
             "plot": None}
    return tuple(values.get(name, empty.get(name, "")) for name in OUTPUTS)


def generate(target, drafters: dict, choosers: dict, image_path, prompt, temperature, depth, top_k, total_tokens,
             auto, new_tokens, drafter_name):
    """One request: the target alone, then speculative decoding, streamed as views of the page.
    `choosers` keeps tree=auto's chooser per drafter and shape: what it learns lasts the session."""
    try:
        if not image_path:
            raise UserError("upload an image or pick an example first")
        image = load_image(image_path)
        cfg = DecodeConfig(int(new_tokens), float(temperature), 1.0, 0,
                           TreeConfig(int(depth), int(top_k), int(total_tokens), bool(auto)))
        prompt_ids = target.encode(image, prompt, cfg.max_new_tokens)
    except UserError as e:
        yield view(status=f"**Cannot run:** {e}")
        return
    drafter = drafters[drafter_name]
    yield view(status="Target alone: generating...")
    alone, alone_s = yield from stream_alone(target, prompt_ids, cfg)
    chooser = None
    if cfg.tree.auto:
        key = (drafter_name, astuple(cfg.tree))
        if key not in choosers:
            yield view(**alone, status="tree=auto: measuring this drafter's costs (once)...")
            calibration = (tree_chooser(target, drafter, prompt_ids, cfg.tree) for _ in range(1))  # runs where decoding runs
            [choosers[key]] = in_main_thread(calibration)
        chooser = choosers[key]
    spec_tokens, spans, steps, trace, spec_s, shown_at = [], [], [], [], 0.0, time.perf_counter()

    # The step data goes to the replay slider's server-side state at every update, and to the
    # page's JSON view only at the end: gradio diffs a streamed output against its previous
    # value, and with a 900-token answer of 48-node trees that work slowed decoding several times.
    def spec_view(**values) -> tuple:
        return view(**alone, spec_text=target.decode(spec_tokens), spec_coloured=coloured_answer(spans),
                    tree=tree_panel(trace, len(trace) - 1), replay=trace,
                    step=gr.update(maximum=max(1, len(trace)), value=len(trace)), **values)

    for step in in_main_thread(speculative_generate(target, drafter, prompt_ids, cfg, chooser)):
        spans += step_spans(target, spec_tokens, step)
        spec_tokens += step.tokens
        steps.append(step)
        spec_s += step.seconds
        if step.tree is not None:
            trace.append(step_record(target.tokenizer, step, len(trace) + 1, target.decode(step.tokens)))
        if time.perf_counter() - shown_at > UPDATE_EVERY_S:
            shown_at = time.perf_counter()
            yield spec_view(spec_stats=f"{len(spec_tokens) / spec_s:.0f} tokens/s", trace=gr.update(),
                            status="Speculative: generating...")
    shape = metrics.trees(steps)
    sizes = (f"; auto drafted trees of {max(0.0, shape['tree_nodes'] - 1):.1f} tokens, {shape['tree_depth']:.1f} deep "
             f"on average, and decoded {shape['plain_steps']} steps plainly" if cfg.tree.auto else "")
    summary = (f"**speed-up {alone_s / spec_s:.2f}x**, tau {metrics.tau(steps):.2f} tokens per target forward "
               f"(incl. bonus), {len(steps) - 1} target forwards for {len(spec_tokens)} tokens{sizes}; outputs "
               + ("identical" if alone["alone_text"] == target.decode(spec_tokens) else "differ (sampled)"))
    yield spec_view(spec_stats=f"{len(spec_tokens)} tokens, {len(spec_tokens) / spec_s:.0f} tokens/s",
                    summary=summary, plot=acceptance_plot(trace), trace=trace, status="Done.")


def stream_alone(target, prompt_ids, cfg: DecodeConfig):
    """The target alone, streamed; returns its answer's text and stats for the views that follow,
    and its decoding time."""
    # Speeds count the decoding steps' own time (Step.seconds), not the UI's work between them, and
    # the UI is updated at most every UPDATE_EVERY_S so that its work does not slow the steps down.
    tokens, alone_s, shown_at = [], 0.0, time.perf_counter()
    for step in in_main_thread(autoregressive_generate(target, prompt_ids, cfg)):
        tokens += step.tokens
        alone_s += step.seconds
        if time.perf_counter() - shown_at > UPDATE_EVERY_S:
            shown_at = time.perf_counter()
            yield view(alone_text=target.decode(tokens), status="Target alone: generating...")
    return {"alone_text": target.decode(tokens), "alone_stats": f"{len(tokens)} tokens, "
            f"{len(tokens) / alone_s:.0f} tokens/s"}, alone_s


def build_app(target, drafters: dict, examples: list[str], max_new_tokens: int, prompt_text: str,
              autorun: str | None, shape: TreeConfig) -> gr.Blocks:
    """The page; `autorun`: an example image to run now, whose result the page then opens with."""
    handle = functools.partial(generate, target, drafters, {})
    # autorun: run an example now; the page then opens showing the finished run (its initial
    # values, so a browser sees it without waiting on a request).
    shown = dict(zip(OUTPUTS, view(step=0, trace=None)))
    if autorun:
        *_, last = handle(autorun, prompt_text, 0.0, *astuple(shape), max_new_tokens, list(drafters)[0])
        shown = dict(zip(OUTPUTS, last))
        shown["step"] = len(shown["trace"])

    with gr.Blocks(title="mmvsd: speculative decoding for LLaVA") as app:
        gr.Markdown(f"# mmvsd: lossless speculative decoding\nTarget `{target.name}`: the target alone and "
                    "speculative decoding answer the same request; at temperature 0 their outputs are identical.")
        with gr.Row():
            with gr.Column(scale=1):
                # A file, not gr.Image: a broken upload then reaches mmvsd's loader, whose message the
                # status line shows, instead of failing inside gradio's own preprocessing.
                image = gr.File(value=autorun, label=f"image (any image file, up to {MAX_UPLOAD[:-2]} MB)",
                                type="filepath", height=90)
                preview = gr.Image(load_image(autorun) if autorun else None, label="preview", interactive=False,
                                   height=200)
                gr.Examples(examples=[[p] for p in examples], inputs=[image])
                prompt = gr.Textbox(value=prompt_text, label="prompt")
                with gr.Row():
                    temperature = gr.Slider(0, 1.5, value=0, step=0.1, label="temperature")
                    new_tokens = gr.Slider(1, max_new_tokens, value=max_new_tokens, step=1, label="max new tokens")
                depth, top_k, total, auto = tree_controls(shape)
                drafter = gr.Dropdown(list(drafters), value=list(drafters)[0], label="drafter")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
                status = gr.Markdown(shown["status"])
            with gr.Column(scale=2):
                shows = results(shown)
        shows.update(status=status, replay=gr.State(shown["replay"]))
        inputs = [image, prompt, temperature, depth, top_k, total, auto, new_tokens, drafter]
        running = run.click(handle, inputs, [shows[name] for name in OUTPUTS], api_name="generate")
        stop.click(lambda: "Stopped.", None, [status], cancels=[running], api_name=False)
        image.change(show_preview, [image], [preview, status], api_name=False)
        shows["step"].release(lambda t, i: tree_panel(t, max(0, int(i) - 1)), [shows["replay"], shows["step"]],
                              [shows["tree"]])
    return app


def tree_controls(shape: TreeConfig) -> tuple:
    """The tree's preset menu over its sliders and auto box (spelled as on the command line)."""
    presets = TreeConfig.presets()
    name = next((name for name, preset in presets.items() if preset == shape), "custom")
    menu = gr.Dropdown([*presets, "custom"], value=name, label="tree")
    with gr.Row():
        depth = gr.Slider(1, 12, value=shape.depth, step=1, label="tree.depth")
        top_k = gr.Slider(1, 8, value=shape.top_k, step=1, label="tree.top_k")
        total = gr.Slider(1, 64, value=shape.total_tokens, step=1, label="tree.total_tokens")
        auto = gr.Checkbox(value=shape.auto, label="tree.auto (sizes at most as above)")
    menu.input(lambda name: astuple(presets[name]) if name in presets else (gr.update(),) * 4, [menu],
               [depth, top_k, total, auto], api_name=False)
    return depth, top_k, total, auto


def results(shown: dict) -> dict:
    """The right-hand column: both answers, the speed summary, the tree, the replay slider, the
    acceptance chart and the step data, keyed by their names in OUTPUTS."""
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Target alone")
            alone_text = gr.Textbox(shown["alone_text"], lines=6, show_label=False)
            alone_stats = gr.Markdown(shown["alone_stats"])
        with gr.Column():
            gr.Markdown("### Speculative")
            spec_text = gr.Textbox(shown["spec_text"], lines=6, show_label=False)
            spec_coloured = gr.HTML(shown["spec_coloured"])
            spec_stats = gr.Markdown(shown["spec_stats"])
    shows = {"alone_text": alone_text, "alone_stats": alone_stats, "spec_text": spec_text,
             "spec_coloured": spec_coloured, "spec_stats": spec_stats, "summary": gr.Markdown(shown["summary"]),
             "tree": gr.HTML(shown["tree"]),
             "step": gr.Slider(0, max(1, shown["step"]), value=shown["step"], step=1,
                               label="replay a step (its tree and counts above)"),
             "plot": gr.Plot(shown["plot"], label="acceptance by depth")}
    with gr.Accordion("step data (JSON)", open=False):
        shows["trace"] = gr.JSON(shown["trace"])
    return shows


def show_preview(image_path):
    if not image_path:
        return None, ""
    try:
        return load_image(image_path), ""
    except UserError as e:
        return None, f"**Cannot use this file:** {e}"


def main(cfg: DemoConfig) -> None:
    if cfg.host not in LOCAL_HOSTS:
        print(f"warning: host={cfg.host} serves the demo to the network: anyone who reaches port {cfg.port} can "
              "run the model and upload files", file=sys.stderr)
    check_device(cfg.device)
    torch.set_grad_enabled(False)
    target = load_target(cfg.target, cfg.dtype, cfg.device, layers=cfg.target_layers, vision_layers=cfg.vision_layers)
    drafter_name = cfg.drafter or default_drafter(cfg.target)
    drafters = {drafter_name if drafter_name in DRAFTERS else f"trained: {drafter_name}":
                load_drafter(drafter_name, target)}
    if "eagle" not in drafters:
        drafters["eagle (untrained: still lossless, rarely accepted)"] = load_drafter("eagle", target)
    examples = example_images(Path(tempfile.mkdtemp(prefix="mmvsd-demo-")))
    app = build_app(target, drafters, examples, cfg.max_new_tokens, cfg.prompt,
                    examples[cfg.example] if cfg.autorun else None, cfg.tree)
    app.queue(default_concurrency_limit=1).launch(server_name=cfg.host, server_port=cfg.port, show_error=True,
                                                  allowed_paths=[str(Path(examples[0]).parent)],
                                                  max_file_size=MAX_UPLOAD, prevent_thread_lock=True)
    try:
        serve_decoding_jobs()
    except KeyboardInterrupt:
        app.close()


def run(argv: list[str] | None = None) -> int:
    return cli.run(DemoConfig, main, "mmvsd demo", __doc__, argv)


if __name__ == "__main__":
    sys.exit(run())
