"""`python demo/app.py`: the target alone and speculative decoding side by side, with every step's
draft tree drawn as it is verified.

    python demo/app.py                                    # toy-m + a trained MSD drafter on http://127.0.0.1:7860
    python demo/app.py --target toy-s --drafter eagle     # any target id, any drafter folder or kind
    python demo/app.py --target llava-hf/llava-1.5-7b-hf --drafter runs/llava7b_msd/drafter --device cuda
    python demo/app.py --host 0.0.0.0 --port 8080         # listen beyond this machine

With no --drafter it uses the MSD drafter shipped for the toy target (toy-m-msd, toy-s-msd); for
any other target it trains one under $MMVSD_HOME/demo/ the first time (recipe toy_msd, progress
in the terminal).
"""

from __future__ import annotations

import argparse
import html
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from mmvsd import metrics  # noqa: E402
from mmvsd.config import DecodeConfig, TreeConfig  # noqa: E402
from mmvsd.decoding.speculative import autoregressive_generate, speculative_generate  # noqa: E402
from mmvsd.drafters import DRAFTERS, load_drafter  # noqa: E402
from mmvsd.errors import UserError  # noqa: E402
from mmvsd.images import load_image  # noqa: E402
from mmvsd.models import load_target  # noqa: E402

PROMPT = "Describe the image in detail."
UPDATE_EVERY_S = 0.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="toy-m", help="tiny-random | toy-s | toy-m | a local folder | a hub id")
    parser.add_argument("--drafter", default=None, help="a drafter folder or kind (default: the demo's trained MSD)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--autorun", action="store_true",
                        help="run the first example at start-up and show its result when the page opens (screenshots)")
    return parser.parse_args(argv)


def default_drafter(target: str) -> str:
    """The MSD drafter shipped for `target` (toy-s, toy-m), or one trained the first time (resumable)."""
    from mmvsd.drafters import shipped_drafters
    from mmvsd.train import train_once

    if f"{target}-msd" in shipped_drafters():
        return f"{target}-msd"
    out = Path(os.environ.get("MMVSD_HOME", "~/.cache/mmvsd")).expanduser() / "demo" / f"{target}_msd"
    if not (out / "drafter" / "model.safetensors").is_file():
        print(f"training the demo's MSD drafter for {target} in {out} (once, ~2 min)", file=sys.stderr)
    return str(train_once(["recipe=toy_msd", f"target={target}"], out))


def example_images(folder: Path, n: int = 3) -> list[str]:
    """Fresh toy-world scenes and charts for the Examples row."""
    from mmvsd.bench import builtin_requests

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
    """Iterate a step generator in the main thread, handing each step over through a queue."""
    if threading.current_thread() is threading.main_thread():  # e.g. --autorun, before the server
        yield from steps
        return
    handover: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            for step in steps:
                handover.put(step)
        except BaseException as e:  # re-raised in the handler's thread
            handover.put(e)
        handover.put(None)

    JOBS.put(work)
    while (item := handover.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def serve_decoding_jobs() -> None:
    while True:
        JOBS.get()()


# ------------------------------------------------------------------ drawing


def tree_svg(step: dict) -> str:
    """One step's draft tree: nodes laid out by depth, the accepted path in green, rejected
    branches dimmed, the bonus token (the target's own next token) in orange."""
    tokens, parents, depths, texts = step["tokens"], step["parents"], step["depths"], step["text"]
    accepted = set(step["path"])
    rows: dict[int, int] = {}
    y_of = []
    for depth in depths:
        y_of.append(rows.get(depth, 0))
        rows[depth] = rows.get(depth, 0) + 1
    width, height = 90, 30
    nodes = [(depths[i], y_of[i], texts[i], "accepted" if i in accepted else "rejected", parents[i])
             for i in range(len(tokens))]
    last = step["path"][-1]
    nodes.append((depths[last] + 1, rows.get(depths[last] + 1, 0), step["bonus_text"], "bonus", last))
    cols = max(n[0] for n in nodes) + 1
    rows_total = max(n[1] for n in nodes) + 1
    colour = {"accepted": "#2e9e4f", "rejected": "#b8b8b8", "bonus": "#f08c00"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="draft-tree" width="{cols * width + 20}" '
             f'height="{rows_total * height + 20}" font-family="monospace" font-size="11">']
    for i, (depth, row, _, kind, parent) in enumerate(nodes):
        if parent >= 0:
            px, py = nodes[parent][0] * width + 10 + 80, nodes[parent][1] * height + 10 + 11
            opacity = 1.0 if kind != "rejected" else 0.35
            parts.append(f'<line x1="{px}" y1="{py}" x2="{depth * width + 10}" y2="{row * height + 21}" '
                         f'stroke="{colour[kind]}" stroke-opacity="{opacity}"/>')
    for depth, row, text, kind, _ in nodes:
        x, y = depth * width + 10, row * height + 10
        opacity = 1.0 if kind != "rejected" else 0.35
        dash = ' stroke-dasharray="4 2"' if kind == "bonus" else ""
        parts.append(f'<g opacity="{opacity}"><rect x="{x}" y="{y}" width="80" height="22" rx="4" fill="white" '
                     f'stroke="{colour[kind]}" stroke-width="2"{dash}/><text x="{x + 40}" y="{y + 15}" '
                     f'text-anchor="middle">{html.escape(repr(text)[1:-1][:10])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def tree_panel(trace: list[dict], index: int) -> str:
    if not trace:
        return "<p>The draft tree of each speculative step appears here.</p>"
    step = trace[min(index, len(trace) - 1)]
    caption = (f"step {step['step']} of {len(trace)}: {len(step['tokens']) - 1} draft tokens, "
               f"{len(step['path']) - 1} accepted + bonus token")
    return f'<div style="overflow-x:auto"><p>{caption}</p>{tree_svg(step)}</div>'


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


def build_app(target, drafters: dict, examples: list[str], max_new_tokens: int, autorun: bool) -> gr.Blocks:
    def generate(image_path, prompt, temperature, depth, top_k, total_tokens, drafter_name):
        empty = ("", "", "", "", "", tree_panel([], 0), gr.update(maximum=1, value=0), [], None)
        try:
            if not image_path:
                raise UserError("upload an image or pick an example first")
            image = load_image(image_path)
            cfg = DecodeConfig(max_new_tokens, float(temperature), 1.0, 0,
                               TreeConfig(int(depth), int(top_k), int(total_tokens)))
            prompt_ids = target.encode(image, prompt, cfg.max_new_tokens)
        except UserError as e:
            yield *empty, f"**Cannot run:** {e}"
            return
        drafter = drafters[drafter_name]
        yield *empty, "Target alone: generating..."
        # Speeds count the decoding steps' own time (Step.seconds), not the UI's work between them, and
        # the UI is updated at most every UPDATE_EVERY_S so that its work does not slow the steps down.
        tokens, alone_s, shown_at = [], 0.0, time.perf_counter()
        for step in in_main_thread(autoregressive_generate(target, prompt_ids, cfg)):
            tokens += step.tokens
            alone_s += step.seconds
            if time.perf_counter() - shown_at > UPDATE_EVERY_S:
                shown_at = time.perf_counter()
                yield target.decode(tokens), "", "", "", "", tree_panel([], 0), gr.update(), [], None, "Target alone: generating..."
        alone_text = target.decode(tokens)
        alone_stats = f"{len(tokens)} tokens, {len(tokens) / alone_s:.0f} tokens/s"
        spec_tokens, steps, trace, spec_s = [], [], [], 0.0
        for step in in_main_thread(speculative_generate(target, drafter, prompt_ids, cfg)):
            spec_tokens += step.tokens
            steps.append(step)
            spec_s += step.seconds
            if step.tree is not None:
                record = step.tree.to_dict(lambda ids: target.tokenizer.decode(ids))
                bonus = step.tokens[len(step.path) - 1] if len(step.tokens) >= len(step.path) else None
                trace.append({"step": len(trace) + 1, **record, "path": list(step.path),
                              "bonus_text": target.tokenizer.decode([bonus]) if bonus is not None else "",
                              "emitted": target.decode(step.tokens)})
            if time.perf_counter() - shown_at > UPDATE_EVERY_S:
                shown_at = time.perf_counter()
                yield (alone_text, alone_stats, target.decode(spec_tokens), f"{len(spec_tokens) / spec_s:.0f} tokens/s",
                       "", tree_panel(trace, len(trace) - 1), gr.update(maximum=max(1, len(trace)), value=len(trace)),
                       trace, None, "Speculative: generating...")
        summary = (f"**speed-up {alone_s / spec_s:.2f}x**, tau {metrics.tau(steps):.2f} tokens per target forward "
                   f"(incl. bonus), {len(trace)} target forwards for {len(spec_tokens)} tokens; outputs "
                   + ("identical" if alone_text == target.decode(spec_tokens) else "differ (sampled)"))
        yield (alone_text, alone_stats, target.decode(spec_tokens),
               f"{len(spec_tokens)} tokens, {len(spec_tokens) / spec_s:.0f} tokens/s", summary,
               tree_panel(trace, len(trace) - 1), gr.update(maximum=max(1, len(trace)), value=len(trace)),
               trace, acceptance_plot(trace), "Done.")

    def show_preview(image_path):
        if not image_path:
            return None, ""
        try:
            return load_image(image_path), ""
        except UserError as e:
            return None, f"**Cannot use this file:** {e}"

    # --autorun: run the first example now; the page then opens showing the finished run (its
    # initial values, so a browser sees it without waiting on a request).
    shown = [""] * 5 + [tree_panel([], 0), None, None, None, ""]
    if autorun and examples:
        shown = list(list(generate(examples[0], PROMPT, 0.0, 10, 2, 16, list(drafters)[0]))[-1])
        shown[6] = len(shown[7])

    with gr.Blocks(title="mmvsd: speculative decoding for LLaVA") as app:
        gr.Markdown(f"# mmvsd: lossless speculative decoding\nTarget `{target.name}`: the target alone and "
                    "speculative decoding answer the same request; at temperature 0 their outputs are identical.")
        with gr.Row():
            with gr.Column(scale=1):
                # A file, not gr.Image: a broken upload then reaches mmvsd's loader, whose message the
                # status line shows, instead of failing inside gradio's own preprocessing.
                image = gr.File(value=examples[0] if autorun else None, label="image (any image file)", type="filepath",
                                height=90)
                preview = gr.Image(load_image(examples[0]) if autorun else None, label="preview", interactive=False, height=200)
                gr.Examples(examples=[[p] for p in examples], inputs=[image])
                prompt = gr.Textbox(value=PROMPT, label="prompt")
                temperature = gr.Slider(0, 1.5, value=0, step=0.1, label="temperature")
                with gr.Row():
                    depth = gr.Slider(1, 12, value=10, step=1, label="tree depth")
                    top_k = gr.Slider(1, 8, value=2, step=1, label="top_k")
                    total = gr.Slider(1, 48, value=16, step=1, label="total tokens")
                drafter = gr.Dropdown(list(drafters), value=list(drafters)[0], label="drafter")
                run = gr.Button("Generate", variant="primary")
                status = gr.Markdown(shown[9])
            with gr.Column(scale=2):
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Target alone")
                        alone_text = gr.Textbox(shown[0], lines=6, show_label=False)
                        alone_stats = gr.Markdown(shown[1])
                    with gr.Column():
                        gr.Markdown("### Speculative")
                        spec_text = gr.Textbox(shown[2], lines=6, show_label=False)
                        spec_stats = gr.Markdown(shown[3])
                summary = gr.Markdown(shown[4])
                tree = gr.HTML(shown[5])
                step = gr.Slider(0, max(1, shown[6] or 0), value=shown[6] or 0, step=1, label="replay a step")
                plot = gr.Plot(shown[8], label="acceptance by depth")
                with gr.Accordion("step data (JSON)", open=False):
                    trace = gr.JSON(shown[7])
        outputs = [alone_text, alone_stats, spec_text, spec_stats, summary, tree, step, trace, plot, status]
        inputs = [image, prompt, temperature, depth, top_k, total, drafter]
        run.click(generate, inputs, outputs, api_name="generate")
        image.change(show_preview, [image], [preview, status], api_name=False)
        step.release(lambda t, i: tree_panel(t or [], max(0, int(i) - 1)), [trace, step], [tree])
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        torch.set_grad_enabled(False)
        target = load_target(args.target, args.dtype, args.device)
        drafter_name = args.drafter or default_drafter(args.target)
        drafters = {drafter_name if drafter_name in DRAFTERS else f"trained: {drafter_name}":
                    load_drafter(drafter_name, target)}
        if "eagle" not in drafters:
            drafters["eagle (untrained: still lossless, rarely accepted)"] = load_drafter("eagle", target)
        examples = example_images(Path(tempfile.mkdtemp(prefix="mmvsd-demo-")))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = build_app(target, drafters, examples, args.max_new_tokens, args.autorun)
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, show_error=True,
                                                  allowed_paths=[str(Path(examples[0]).parent)],
                                                  prevent_thread_lock=True)
    try:
        serve_decoding_jobs()
    except KeyboardInterrupt:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
