"""The authors' checkpoint layouts: EAGLE's, MSD's and ViSpec's drafters read as released, and
mmvsd's drafters written in them.

What the authors write (read from their saving and loading code; see README "Released drafters"):

| layout | weights file | dtype | config.json |
|---|---|---|---|
| eagle (SafeAILab/EAGLE) | pytorch_model.bin | fp32 | a Llama config, `model_type` "llama" |
| msd (Lyn-Lucy/MSD) | pytorch_model.bin (DeepSpeed `save_16bit_model`) | bf16 | `model_type` "llava" |
| vispec (KangJialiang/ViSpec) | model.safetensors (accelerate `save_state`) | as trained | Llama fields |

All three hold EAGLE's keys: `embed_tokens.weight` (a copy of the target's, frozen), `fc.weight`
and `fc.bias` (`bias` missing from the config means True), layer 0's q/k/v/o, gate/up/down and
post-attention norm (no input norm, no final norm, no head); ViSpec adds `img_fc.*` and `imadpt.*`
(`num_q` is the first dimension of `imadpt.q`). MSD's keys are EAGLE's: its config's `model_type`
("llava") tells them apart. Their loaders try pytorch_model.bin first, then model.safetensors.

mmvsd's layer fuses q/k/v and gate/up (one matmul each per draft step): the one mapping below
joins the authors' projections on the way in and splits them on the way out.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mmvsd.drafters.base import FORMAT, DrafterSpec
from mmvsd.errors import UserError
from mmvsd.files import ordinary_modes

LAYOUTS = ("eagle", "msd", "vispec")
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")  # the order the authors' loaders try them
LAYOUT_FILE = {"eagle": "pytorch_model.bin", "msd": "pytorch_model.bin", "vispec": "model.safetensors"}

RENAMED = {  # authors' key -> mmvsd's, for weights that are only renamed
    "fc.weight": "fc.weight", "fc.bias": "fc.bias",
    "layers.0.self_attn.o_proj.weight": "layer.out.weight",
    "layers.0.post_attention_layernorm.weight": "layer.post_attention_norm.weight",
    "layers.0.mlp.down_proj.weight": "layer.down.weight",
}
JOINED = {  # mmvsd's fused weight <- the authors' weights, concatenated in this order
    "layer.qkv.weight": tuple(f"layers.0.self_attn.{p}_proj.weight" for p in "qkv"),
    "layer.gate_up.weight": ("layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight"),
}
VISPEC = ("img_fc.weight", "img_fc.bias", "imadpt.q", "imadpt.k_proj.weight", "imadpt.v_proj.weight",
          "imadpt.o_proj.weight")  # named alike in both
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older EAGLE files carry; recomputed here


def is_authors_folder(folder: Path) -> bool:
    """A folder in one of the authors' layouts: weights without mmvsd's `kind` in its config."""
    config = _read_config(folder) if (folder / "config.json").is_file() else {}
    return "kind" not in config and any((folder / f).is_file() for f in WEIGHT_FILES)


def authors_kind(folder: Path) -> str:
    """eagle, msd or vispec, from the keys (ViSpec's own) and the config (MSD's model_type "llava")."""
    return _kind(set(_read_weights(folder, keys_only=True)), _read_config(folder))


def _kind(keys: set[str], config: dict) -> str:
    if "imadpt.q" in keys:
        return "vispec"
    return "msd" if str(config.get("model_type", "llama")).startswith("llava") else "eagle"


def read_authors(folder: Path, target) -> tuple[DrafterSpec, dict[str, torch.Tensor]]:
    """The spec and mmvsd-named weights of a drafter in the authors' layout, checked against
    `target`: its width, heads and embedding rows (a drafter of another target is refused here)."""
    config, keys, name = _read_config(folder), set(_read_weights(folder, keys_only=True)), f"drafter {folder}"
    kind, text = _kind(keys, config), target.model.config.text_config
    bias = config.get("bias", True) is not False  # the authors' loaders: fc has a bias unless the config says false
    _check_keys(keys, kind, bias, name)  # before reading a whole file
    state = {k: v for k, v in _read_weights(folder).items() if not k.endswith(IGNORED_SUFFIXES)}
    if config.get("rope_scaling"):
        raise UserError(f"{name}: config.json sets rope_scaling {config['rope_scaling']}; LLaVA-1.5 drafters have none")
    hidden = state["fc.weight"].shape[0] if state["fc.weight"].ndim else 0
    if hidden != text.hidden_size:
        raise UserError(f"{name} is for a target of hidden size {hidden}, {target.name} has {text.hidden_size}: "
                        "it was trained for another model")
    heads = _number(config, "num_attention_heads", text.num_attention_heads, int, name)
    if heads < 1 or hidden % heads or _number(config, "num_key_value_heads", heads, int, name) != heads:
        raise UserError(f"{name}: config.json's {heads} attention heads with {config.get('num_key_value_heads')} "
                        f"key/value heads is not a LLaVA-1.5 drafter layer of width {hidden}")
    down = state["layers.0.mlp.down_proj.weight"]
    intermediate = down.shape[-1] if down.ndim else 0  # a wrong shape is refused just below
    _check_tensors(state, hidden, intermediate, heads, name)
    _check_embedding(state.pop("embed_tokens.weight"), target.embed_tokens.weight, name, target.name)
    if not bias:  # built without one, the authors' fc ignores any bias the file holds
        state["fc.bias"] = torch.zeros(hidden, dtype=state["fc.weight"].dtype)
    mapped = {ours: state[theirs] for theirs, ours in RENAMED.items()}
    mapped |= {ours: torch.cat([state[k] for k in theirs]) for ours, theirs in JOINED.items()}
    extra = {}
    if kind == "vispec":
        mapped |= {k: state[k] for k in VISPEC}
        extra["num_queries"] = int(state["imadpt.q"].shape[0])
    spec = DrafterSpec(kind=kind, hidden_size=hidden, num_heads=heads, intermediate_size=intermediate,
                       vocab_size=target.vocab_size, rope_theta=_number(config, "rope_theta", 10000.0, float, name),
                       rms_norm_eps=_number(config, "rms_norm_eps", float(text.rms_norm_eps), float, name),
                       format=FORMAT, target=target.fingerprint(), extra=extra)
    return spec, mapped


def check_layout(layout: str, kind: str) -> None:
    """Each kind has its authors' layout and fits no other (an EAGLE file read as MSD's would splice images)."""
    if layout != kind:
        raise UserError(f"layout={layout} does not fit a {kind} drafter: export it as layout={kind}"
                        + ("" if layout in LAYOUTS else f" (the layouts are {', '.join(LAYOUTS)})"))


def write_authors(drafter, embed_tokens: torch.Tensor, out: Path, layout: str) -> Path:
    """`drafter` in the authors' `layout` under `out`: their key names, file, dtype as the drafter's,
    config.json; `embed_tokens` [V, H] is the drafter's target's (the authors' files carry a copy)."""
    check_layout(layout, drafter.kind)
    spec, own = drafter.spec, drafter.state_dict()
    state = {theirs: own[ours] for theirs, ours in RENAMED.items()}
    for ours, theirs in JOINED.items():
        state |= dict(zip(theirs, own[ours].split(own[ours].shape[0] // len(theirs))))
    if layout == "vispec":
        state |= {k: own[k] for k in VISPEC}
    dtype = own["fc.weight"].dtype
    state["embed_tokens.weight"] = embed_tokens.detach().to(dtype)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    config = {"architectures": ["LlamaForCausalLM" if layout == "eagle" else "LlavaLlamaForCausalLM"],
              "model_type": "llama" if layout == "eagle" else "llava",
              "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
              "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_heads, "num_hidden_layers": 1,
              "hidden_act": "silu", "rms_norm_eps": spec.rms_norm_eps, "rope_theta": spec.rope_theta,
              "vocab_size": int(embed_tokens.shape[0]), "bias": True, "torch_dtype": str(dtype).removeprefix("torch."),
              "max_position_embeddings": 4096}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / LAYOUT_FILE[layout]
    tmp = weights.with_name(f".{weights.name}.tmp")
    if weights.suffix == ".bin":
        torch.save(state, tmp)
    else:
        save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ordinary_modes(out)
    return out


# ---------------------------------------------------------------- reading and checking

def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        return {}  # the authors' loaders fall back to their defaults; so do the fields read here
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"drafter {folder}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"drafter {folder}: config.json is not a JSON object")
    return config


def _read_weights(folder: Path, keys_only: bool = False) -> dict[str, torch.Tensor]:
    """The first of the authors' weight files present, as a state dict (or just its keys)."""
    path = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if path is None:
        raise UserError(f"drafter {folder}: neither {' nor '.join(WEIGHT_FILES)} is there; "
                        "a released drafter's folder holds one of them and config.json")
    try:
        if path.suffix == ".safetensors" and keys_only:
            with safe_open(str(path), "pt") as f:
                return {k.removeprefix("module."): None for k in f.keys()}
        state = load_file(str(path)) if path.suffix == ".safetensors" else _load_bin(path)
    except (SafetensorError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise UserError(f"drafter {folder}: cannot read {path.name}, truncated or not a checkpoint "
                        f"({' '.join(str(e).split())[:160]}); download it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"drafter {folder}: {path.name} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}  # accelerate's save_state under DDP


def _load_bin(path: Path) -> dict:
    try:  # mapped, not read: the layer's weights are copied once, the embedding compared in chunks
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # torch's legacy format cannot be mapped


def _number(config: dict, key: str, default, cast, name: str):
    """A numeric config field (absent or null: `default`), refused in one line when it is not one."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (cast is int and value != int(value)):
        raise UserError(f"{name}: config.json's {key} is {value!r}, not a number")
    return cast(value)


def _check_keys(keys: set[str], kind: str, bias: bool, name: str) -> None:
    """The layout's keys, all of them and no others (fc.bias may go when the config says bias: false)."""
    keys = {k for k in keys if not k.endswith(IGNORED_SUFFIXES)}
    expected = {"embed_tokens.weight", *RENAMED, *(k for group in JOINED.values() for k in group)}
    if kind == "vispec":
        expected |= set(VISPEC)
    biases = sorted(k for k in keys if k.startswith("layers.0.self_attn.") and k.endswith(".bias"))
    if biases:
        raise UserError(f"{name}: its attention has biases ({biases[0]}, ...): a drafter for a Qwen2-style target, "
                        "not for a LLaVA-1.5 (Llama) one")
    unknown = sorted(keys - expected)
    if unknown:
        raise UserError(f"{name}: keys of an unknown layout ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}); "
                        f"known layouts: {', '.join(LAYOUTS)} (EAGLE's keys, plus img_fc/imadpt for ViSpec)")
    missing = sorted(expected - keys - (set() if bias else {"fc.bias"}))
    if missing:
        raise UserError(f"{name}: missing {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} "
                        f"for the {kind} layout; the file is incomplete")


def _check_tensors(state: dict, hidden: int, intermediate: int, heads: int, name: str) -> None:
    """Every weight a float tensor shaped as a LLaVA-1.5 drafter layer has it (grouped key/value
    heads, for one, are not)."""
    square, wide, head_dim = (hidden, hidden), (hidden, 2 * hidden), hidden // heads
    expected = {"fc.weight": wide, "fc.bias": (hidden,), "layers.0.post_attention_layernorm.weight": (hidden,),
                **{f"layers.0.self_attn.{p}_proj.weight": square for p in "qkvo"},
                "layers.0.mlp.gate_proj.weight": (intermediate, hidden), "layers.0.mlp.up_proj.weight": (intermediate, hidden),
                "layers.0.mlp.down_proj.weight": (hidden, intermediate), "img_fc.weight": wide, "img_fc.bias": (hidden,),
                **{f"imadpt.{p}_proj.weight": square for p in "kvo"}}
    for key, value in state.items():
        if not value.is_floating_point():
            raise UserError(f"{name}: {key} is {str(value.dtype).removeprefix('torch.')}, not a float tensor "
                            "(a quantized drafter?); give its bf16, fp16 or fp32 checkpoint")
        if key == "embed_tokens.weight":
            ok, want = value.ndim == 2 and value.shape[1] == hidden, f"[rows, {hidden}]"
        elif key == "imadpt.q":
            ok, want = value.ndim == 3 and tuple(value.shape[1:]) == (heads, head_dim), f"[num_q, {heads}, {head_dim}]"
        else:
            ok, want = tuple(value.shape) == expected[key], str(list(expected[key]))
        if not ok:
            raise UserError(f"{name}: {key} has shape {list(value.shape)}, expected {want} for a LLaVA-1.5 drafter "
                            f"of hidden size {hidden} with {heads} heads")


def _check_embedding(theirs: torch.Tensor, ours: torch.Tensor, name: str, target: str) -> None:
    """The file's copy of the embedding against the target's on the rows both have (32000 of a
    Vicuna-era drafter on llava-hf's 32064 is normal), compared at bf16 precision: the authors
    save in bf16 or fp32, targets load in fp16, bf16 or fp32."""
    rows = min(len(theirs), len(ours))
    for start in range(0, rows, 4096):
        a = theirs[start:min(rows, start + 4096)].to(torch.bfloat16).float()
        b = ours[start:min(rows, start + 4096)].detach().cpu().to(torch.bfloat16).float()
        bad = ~torch.isclose(a, b, rtol=2e-2, atol=1e-6)
        if bad.any():
            row = start + int(bad.any(-1).nonzero()[0])
            raise UserError(f"{name}: embedding row {row} differs from {target}'s (max |diff| "
                            f"{(a - b).abs().max():.3g}): the drafter was trained for another target")
