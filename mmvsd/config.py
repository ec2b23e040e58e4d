"""Every configuration dataclass of mmvsd (no torch import here).

A config is plain data: defaults here, then a recipe YAML (training), then `key=value` on the
command line (see `mmvsd.cli`). Cross-field checks live in `__post_init__`, which runs once on the
final values. Values derived from the loaded target (hidden size, vocabulary, image tokens) are
never config: they are read from the target when models are built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal

from mmvsd.errors import UserError


def opt(default: Any, help: str | Callable[[], str], data: bool = False) -> Any:
    """A dataclass field with a help text shown by `--help` (a callable is asked at that time).
    `data=True` marks a training setting that changes which conversations a micro-batch holds:
    the feature cache is keyed by these (`mmvsd.training.cache`)."""
    metadata = {"help": help, "data": data}
    if dataclasses.is_dataclass(default):  # a group: its class (defaults) or an instance (e.g. a preset)
        factory = default if isinstance(default, type) else lambda: dataclasses.replace(default)
        return field(default_factory=factory, metadata=metadata)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _drafter_kinds() -> list[str]:
    from mmvsd.drafters import DRAFTERS  # torch: imported only when --help is shown

    return list(DRAFTERS)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _require_finite(config: Any, prefix: str = "") -> None:
    """inf and nan pass most range checks (inf >= 0); no mmvsd setting means either."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{prefix}{f.name} must be a finite number, got {value}")


# Temperatures below this decode greedily. At 1e-5, logits 1e-3 apart are e^-100 apart after
# tempering: the distribution is the argmax to float32 precision anyway, and far smaller values
# overflow the scaled logits into NaN (transformers' own sampling then fails).
MIN_TEMPERATURE = 1e-5


def is_greedy(temperature: float) -> bool:
    return temperature < MIN_TEMPERATURE


def _require_sampling(temperature: float, top_p: float, top_k: int) -> None:
    _require(temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {temperature}")
    _require(0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}")
    _require(top_k >= 0, f"top_k must be >= 0 (0 = off), got {top_k}")


def require_threads(threads: int) -> None:
    _require(threads >= 0, f"threads must be >= 0 (0 = automatic), got {threads}")


Dtype = Literal["float32", "bfloat16", "float16"]
THREADS_HELP = "CPU threads for torch (0 = OMP_NUM_THREADS, else the cores shared by running mmvsd processes)"
TARGET_HELP = "tiny-random | toy-s | toy-m | random:llava-1.5-7b|13b | a local folder | a hub id"


@dataclass
class TargetSettings:
    """Which target, cut to how many layers: the first keys of every command that loads one."""

    target: str = opt("toy-m", TARGET_HELP)
    target_layers: int = opt(0, "random:* targets: keep the first N language-model layers (0 = all)")
    vision_layers: int = opt(0, "random:* targets: keep the first N vision-tower layers (0 = all)")
    dtype: Dtype = opt("float32", "weights and activations dtype")
    device: str = opt("cpu", "torch device, e.g. cpu or cuda (under accelerate launch: each process's own)")
    threads: int = opt(0, THREADS_HELP)

    def __post_init__(self) -> None:
        _require(self.target_layers >= 0, f"target_layers must be >= 0 (0 = all), got {self.target_layers}")
        _require(self.vision_layers >= 0, f"vision_layers must be >= 0 (0 = all), got {self.vision_layers}")
        require_threads(self.threads)


DEMO_EXAMPLES = 5  # toy-world images in the demo's Examples row


@dataclass
class TreeConfig:
    """Shape of the EAGLE-2 dynamic draft tree (Li et al. 2024, arXiv 2406.16858). Set by a preset
    (`tree=short`) and/or field by field (`tree.depth=8`, applied on top of a preset). With
    `auto` (the `auto` preset: the default of bench, lmms-eval and the demo) each step's depth and
    size are chosen from measured costs (`mmvsd.decoding.auto`), `depth` and `total_tokens` being
    their upper bounds; setting any field without naming `tree=auto` turns it off."""

    depth: int = opt(10, "drafter expansion rounds: the longest draft path (auto: at most)")
    top_k: int = opt(2, "children kept per expanded node and beam width per round")
    total_tokens: int = opt(16, "draft tokens verified per step, best by cumulative log-probability (auto: at most)")
    auto: bool = opt(False, "choose each step's depth and size (and whether to draft at all) by measured cost")

    def __post_init__(self) -> None:
        _require(self.depth >= 1, f"tree.depth must be >= 1, got {self.depth}")
        _require(self.top_k >= 1, f"tree.top_k must be >= 1, got {self.top_k}")
        _require(self.total_tokens >= 1, f"tree.total_tokens must be >= 1, got {self.total_tokens}")

    @staticmethod
    def presets() -> dict[str, TreeConfig]:
        """The named shapes; the first is the commands' default."""
        return {
            # sized each step from measured costs: deep when the drafter is confident, no tree when drafting cannot pay
            "auto": TreeConfig(10, 2, 64, auto=True),
            # trained toy-m drafters are accepted ~8 deep: a deep narrow tree
            "narrow": TreeConfig(10, 2, 16),
            # toy-s decodes in ~1.8 ms, so drafting costs relatively more: a shallower tree
            "short": TreeConfig(6, 2, 10),
            # one path, no branching: the cheapest verification (gpt-fast's shape)
            "chain": TreeConfig(8, 1, 8),
            # EAGLE-2's bushy shape: for weak or untrained drafters whose first guess is often wrong
            "wide": TreeConfig(5, 8, 24),
        }

    # What `Drafter.propose` asks of a shape (`mmvsd.decoding.drafting.TreeShape`): a fixed one
    # drafts every level up to `depth` and verifies `total_tokens`.
    def grows(self, grower, frontier: list[int], depth: int) -> bool:
        return depth < self.depth

    def size(self, grower) -> int:
        return self.total_tokens


@dataclass
class DecodeConfig:
    """How one answer is generated; shared by the bench, lmms-eval plugin and demo."""

    max_new_tokens: int = opt(64, "tokens to generate at most per answer")
    temperature: float = opt(0.0, f"0 = greedy (so is anything below {MIN_TEMPERATURE:g}); > 0 samples from the target's "
                                  "tempered distribution")
    top_p: float = opt(1.0, "nucleus sampling on the target side (1 = off)")
    seed: int = opt(0, "seed of the sampler")
    tree: TreeConfig = opt(TreeConfig, "draft tree shape")
    top_k: int = opt(0, "keep the k most likely tokens on the target side (0 = off)")

    def __post_init__(self) -> None:
        _require_finite(self)
        _require(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _require_sampling(self.temperature, self.top_p, self.top_k)


@dataclass
class OracleConfig:
    """`drafter=oracle` (bench only): proposes the target's own greedy continuation, drafting for free."""

    accept: float = opt(1.0, "chance that each proposed token is the target's own (sets tau: a chain of depth D "
                             "accepts 1 + p + ... + p^D tokens per step)")

    def __post_init__(self) -> None:
        _require(isinstance(self.accept, (int, float)) and 0 < self.accept <= 1,
                 f"oracle.accept must be in (0, 1], got {self.accept}")


@dataclass
class BenchConfig(TargetSettings):
    """`python -m mmvsd.bench`: the target alone vs speculative decoding, same inputs, one process."""

    target: str = opt("tiny-random", TARGET_HELP)
    drafter: str = opt("eagle", lambda: f"a drafter folder (mmvsd's or an author's release), a cached hub id, a shipped "
                                        f"drafter, a kind ({', '.join(_drafter_kinds())}) for an untrained one, or "
                                        "oracle (the engine's cost alone)")
    oracle: OracleConfig = opt(OracleConfig, "drafter=oracle: how often its proposals are right")
    draft_vocab: int = opt(0, "an untrained drafter drafts over N token ids only (EOS and the lowest ids; 0 = all): "
                              "measures a reduced head's cost (a trained drafter brings its own draft vocabulary)")
    data: str | None = opt(None, 'JSONL of {"image": path, "prompt": text} or MMSpec\'s {"image": path, "turns": '
                                 '[text, ...], "topic": ...} (toy:mmspec: the toy world\'s set); default: built-in examples')
    n: int = opt(0, "use the first n inputs (0 = the whole data file, or 8 built-in examples)")
    batch_size: int = opt(1, "requests decoded at once, target alone and speculative alike (> 1: throughput, "
                             "latency p50/p90 and time to first token per request)")
    max_new_tokens: int = opt(64, "tokens to generate at most per answer")
    temperature: float = opt(0.0, f"0 = greedy (outputs must be identical; so is anything below {MIN_TEMPERATURE:g}); "
                                  "> 0 samples")
    top_p: float = opt(1.0, "nucleus sampling on the target side (1 = off)")
    top_k: int = opt(0, "keep the k most likely tokens on the target side (0 = off)")
    seed: int = opt(0, "seed of the sampler and of the untrained drafter")
    tree: TreeConfig = opt(TreeConfig.presets()["auto"], "draft tree shape")
    json: str | None = opt(None, "write the results to this JSON file")
    assistant: str | None = opt(None, "peer: also time transformers' assisted generation with this small "
                                      "LLaVA (e.g. toy-s) as assistant_model, on the same inputs")
    download: bool = opt(False, "allow fetching a hub id that is not in the local cache")
    head_fp32: bool = opt(False, "bf16/fp16 targets: compute the LM head from a float32 copy of its weights, to "
                                 "measure what logit ties cost (README, 'The lossless contract')")
    vispec_image: str = opt("compress", "ViSpec drafters: compress each image with imadpt, as the authors' training "
                                        "does (compress), or read its tokens as text with g = 0, as their released "
                                        "inference does on LLaVA-1.5 (text)")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        _require(self.n >= 0, f"n must be >= 0 (0 = the whole data file), got {self.n}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.batch_size == 1 or not self.assistant, "assistant= times transformers' assisted generation, "
                                                             "which decodes one request at a time: use batch_size=1")
        _require(self.vispec_image in ("compress", "text"), f"vispec_image must be compress or text, got {self.vispec_image}")
        super().__post_init__()
        self.decode  # validates the decoding knobs
        _require(self.drafter != "oracle" or is_greedy(self.temperature),
                 "drafter=oracle replays the target's greedy output: use it with temperature=0")
        _require(self.draft_vocab >= 0, f"draft_vocab must be >= 0 (0 = the whole vocabulary), got {self.draft_vocab}")

    @property
    def decode(self) -> DecodeConfig:
        return DecodeConfig(self.max_new_tokens, self.temperature, self.top_p, self.seed, self.tree, self.top_k)


@dataclass
class LmmsConfig(TargetSettings):
    """`python -m lmms_eval --model mmvsd --model_args key=value,...`: the bench's keys, comma-separated."""

    drafter: str | None = opt(None, "a drafter folder (mmvsd's or an author's release), cached hub id, shipped "
                                    "drafter or kind; absent: the target alone")
    temperature: float = opt(0.0, "0 = greedy; > 0 samples (a task's generation_kwargs override it)")
    top_p: float = opt(1.0, "nucleus sampling on the target side (a task's generation_kwargs override it)")
    top_k: int = opt(0, "keep the k most likely tokens on the target side (0 = off; generation_kwargs override it)")
    seed: int = opt(0, "seed of the sampler and of an untrained drafter")
    tree: TreeConfig = opt(TreeConfig.presets()["auto"], "draft tree shape")
    download: bool = opt(False, "allow fetching a hub id that is not in the local cache")

    def __post_init__(self) -> None:
        super().__post_init__()
        DecodeConfig(1, self.temperature, self.top_p, self.seed, self.tree, self.top_k)  # validates the decoding knobs


@dataclass
class DemoConfig(TargetSettings):
    """`mmvsd demo` (or `python demo/app.py`): the Gradio demo."""

    drafter: str | None = opt(None, "a drafter folder (mmvsd's or an author's release), cached hub id, shipped "
                                    "drafter or kind (default: the MSD drafter shipped for "
                                    "the toy target, or one trained once for another target)")
    tree: TreeConfig = opt(TreeConfig.presets()["auto"], "the tree menu's starting shape")
    max_new_tokens: int = opt(96, "the longest answer (the slider's maximum)")
    prompt: str = opt("Describe the image in detail.", "the prompt box's first text (and autorun's prompt)")
    autorun: bool = opt(False, "run an example at start-up and open the page on its result (screenshots)")
    example: int = opt(0, f"the example autorun runs (0..{DEMO_EXAMPLES - 1})")
    host: str = opt("127.0.0.1", "address to listen on (this machine only; any other prints a warning)")
    port: int = opt(7860, "port to listen on")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _require(0 <= self.example < DEMO_EXAMPLES, f"example must be in 0..{DEMO_EXAMPLES - 1}, got {self.example}")
        _require(1 <= self.port <= 65535, f"port must be in 1..65535, got {self.port}")


@dataclass
class VsdConfig:
    """VSD training (Zou et al., ICML 2026, arXiv 2602.05774; our formulation, mmvsd.training.vsd)."""

    enabled: bool = opt(False, "add VSD's EM objective over sampled draft paths (start from a trained drafter)")
    num_proposals: int = opt(8, "S: draft paths sampled per context in the E-step")
    depth: int = opt(4, "L: tokens per sampled draft path")
    contexts: int = opt(4, "C: answer positions per sequence the paths start from")
    temperature: float = opt(1.0, "sampling temperature of the drafter's proposals")
    target_temperature: float = opt(0.0, "the oracle: 0 = greedy verification, > 0 = stochastic at this temperature")
    weight: float = opt(1.0, "weight of the weighted path likelihood (M-step)")
    arw: bool = opt(True, "Adaptive Rejection Weighting: rejected paths keep their accepted prefixes, tempered weights")
    arw_gamma: float = opt(0.5, "ARW: weight discount per token a path falls short of full acceptance")
    ess_floor: float = opt(0.5, "ARW: weights are tempered until the effective sample size is >= this share of S")
    car: bool = opt(True, "Confidence-Aware Regularisation: push down confident mass on first-rejected tokens")
    car_weight: float = opt(0.1, "weight of CAR")

    def __post_init__(self) -> None:
        _require_finite(self, "vsd.")
        for name in ("num_proposals", "depth", "contexts"):
            _require(getattr(self, name) >= 1, f"vsd.{name} must be >= 1, got {getattr(self, name)}")
        _require(self.temperature > 0, f"vsd.temperature must be > 0, got {self.temperature}")
        _require(self.target_temperature >= 0, f"vsd.target_temperature must be >= 0, got {self.target_temperature}")
        _require(0 < self.arw_gamma <= 1, f"vsd.arw_gamma must be in (0, 1], got {self.arw_gamma}")
        _require(0 < self.ess_floor <= 1, f"vsd.ess_floor must be in (0, 1], got {self.ess_floor}")


@dataclass
class TrainConfig(TargetSettings):
    """`python -m mmvsd.train recipe=NAME`: train a drafter on a target's own features."""

    drafter: str = opt("msd", lambda: f"a drafter kind ({', '.join(_drafter_kinds())}) to start untrained, or a "
                                      "drafter to start from: a folder (mmvsd's or an author's release) or a cached hub id")
    output_dir: str | None = opt(None, "where the run is written (default runs/train)")
    data: str | None = opt(None, "LLaVA/ShareGPT .json or target-answers .jsonl; default: fresh toy-world conversations", data=True)
    image_folder: str | None = opt(None, "folder the data file's image paths are relative to (default: its folder)", data=True)
    text_data: str | None = opt(None, "text-only conversations (ShareGPT .json) for the text-first curriculum; "
                                      "default: the main source's conversations without their image", data=True)
    max_length: int = opt(2048, "conversations from a data file are cut to this many tokens", data=True)
    target_answers: int = opt(0, "ViSpec-style data: first have the target describe this many fresh toy images "
                                 "(greedy, kept in output_dir/answers, resumable) and train on its answers", data=True)
    steps: int = opt(300, "optimizer steps")
    batch_size: int = opt(8, "conversations per micro-batch", data=True)
    grad_accum: int = opt(1, "micro-batches per optimizer step", data=True)
    lr: float = opt(1e-3, "peak learning rate (AdamW, linear warmup, cosine decay to 10%)")
    warmup_steps: int = opt(20, "linear warmup steps")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    regression_weight: float = opt(1.0, "weight of the SmoothL1 feature regression")
    token_weight: float = opt(0.1, "weight of the cross-entropy to the target's next-token distribution")
    describe_share: float = opt(0.8, "share of conversations that are long descriptions (the rest short QA)", data=True)
    text_first_steps: int = opt(0, "text-first curriculum (MSD; ViSpec's stage 1): steps on text-only conversations first", data=True)
    text_ramp_steps: int = opt(0, "then steps over which the image-bearing share grows to 1 (MSD; 0 = switch at once, "
                                  "ViSpec's stage 2)", data=True)
    self_feed_passes: int = opt(0, "ViSpec's 'MTP' passes: rerun the drafter on its own predicted features, same loss")
    draft_vocab: int = opt(0, "draft over the N most frequent answer tokens of the training data (EAGLE-3's reduced "
                              "vocabulary; 0 = all): cheaper draft steps, the target still verifies over all tokens")
    vsd: VsdConfig = opt(VsdConfig, "VSD objective over sampled draft paths (off unless vsd.enabled=true)")
    feature_cache: str | None = opt(None, "folder caching the target's features per micro-batch: computed once, "
                                          "read by later runs over the same data")
    seed: int = opt(0, "seed of the drafter's initialisation and of the data stream", data=True)
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "accelerate mixed precision (bf16 on GPUs)")
    checkpoint_every: int = opt(50, "steps between atomic checkpoints")
    log_with: str = opt("jsonl", "metric trackers, comma-separated: jsonl (metrics.jsonl, always on), tensorboard, wandb")
    resume: bool = opt(False, "continue from output_dir/checkpoint.pt exactly where a killed run stopped")
    eval_n: int = opt(8, "held-out toy images for eval.json (0 = skip)")
    eval_max_new_tokens: int = opt(96, "tokens per held-out answer in eval.json")
    tree: TreeConfig = opt(TreeConfig, "draft tree shape used by eval.json")
    launch_config: str | None = opt(None, "dry_run: check this accelerate config (fsdp, deepspeed or a YAML path) and "
                                          "estimate batch and memory for its processes")
    dry_run: bool = opt(False, "print the resolved config and exit")

    def __post_init__(self) -> None:
        _require_finite(self)
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "max_length", "eval_max_new_tokens"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        super().__post_init__()
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        for name in ("warmup_steps", "weight_decay", "regression_weight", "token_weight"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(0 <= self.describe_share <= 1, f"describe_share must be in [0, 1], got {self.describe_share}")
        _require(self.eval_n >= 0, f"eval_n must be >= 0, got {self.eval_n}")
        _require(min(self.text_first_steps, self.text_ramp_steps) >= 0, "text_first_steps and text_ramp_steps must be >= 0")
        _require(self.target_answers >= 0, f"target_answers must be >= 0, got {self.target_answers}")
        _require(not (self.data and self.target_answers), "give either data=FILE or target_answers=N, not both")
        _require(self.self_feed_passes >= 0, f"self_feed_passes must be >= 0, got {self.self_feed_passes}")
        _require(self.draft_vocab >= 0, f"draft_vocab must be >= 0 (0 = the whole vocabulary), got {self.draft_vocab}")
