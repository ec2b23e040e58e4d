"""The authors' drafters as released (issue 24): a checkpoint written here in each author's exact
layout (key names, shapes, dtype, file name, config fields) loads through `drafter=PATH` and
computes what an independent re-implementation of the authors' forward computes; mmvsd's drafters
export to those layouts and back; broken or foreign checkpoints are refused in one line.

`AuthorsDrafter` below is written from the authors' published code, not from mmvsd's modules:
EAGLE's `cnets1.py` Model (fc over [embedding ; feature], layer 0 without an input norm, eager
attention with an fp32 softmax, rotate-half RoPE), MSD's splice of the projected image features
over fc's output at the slots whose next token is an image token (`cnets.py`), and ViSpec's
`cnets_ours.py` (img_fc over [feature ; g], `imadpt` learned-query compression placed at the
image run's last slots, g carried to later text). Slots follow the authors' shift: slot j pairs
the target's post-norm state h_j with the embedding of token j + 1 and sits at position j.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import random_image
from safetensors.torch import load_file, save_file
from torch import nn

from mmvsd.config import TreeConfig
from mmvsd.drafters import build_drafter, drafter_kind, load_drafter, save_drafter
from mmvsd.decoding.drafting import make_pairs
from mmvsd.errors import UserError

# ---------------------------------------------------------------- the authors' computation, re-implemented


class AuthorsLayer(nn.Module):
    """EAGLE's LlamaDecoderLayer with index 0: no input_layernorm."""

    def __init__(self, hidden, heads, intermediate, eps):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.self_attn = nn.Module()
        for name in "qkvo":
            setattr(self.self_attn, f"{name}_proj", nn.Linear(hidden, hidden, bias=False))
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.mlp.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.mlp.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.post_attention_layernorm = nn.Module()
        self.post_attention_layernorm.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x, positions):
        t, hidden = x.shape
        d = hidden // self.heads
        a = self.self_attn
        q, k, v = (p(x).view(t, self.heads, d).transpose(0, 1) for p in (a.q_proj, a.k_proj, a.v_proj))
        inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
        freqs = positions.float()[:, None] * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)

        def rope(u):
            half = u.shape[-1] // 2
            return u * emb.cos() + torch.cat([-u[..., half:], u[..., :half]], dim=-1) * emb.sin()

        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(d)
        scores = scores + torch.full((t, t), torch.finfo(torch.float32).min).triu(1)
        attn = torch.softmax(scores, dim=-1, dtype=torch.float32) @ v
        x = x + a.o_proj(attn.transpose(0, 1).reshape(t, hidden))
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.post_attention_layernorm.weight
        return x + self.mlp.down_proj(nn.functional.silu(self.mlp.gate_proj(y)) * self.mlp.up_proj(y))


class AuthorsDrafter(nn.Module):
    """The authors' drafter with their parameter names, so that their state dict loads strictly."""

    def __init__(self, kind, vocab, hidden, heads, intermediate, eps, num_q=2):
        super().__init__()
        self.kind = kind
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.fc = nn.Linear(2 * hidden, hidden)
        self.layers = nn.ModuleList([AuthorsLayer(hidden, heads, intermediate, eps)])
        if kind == "vispec":
            self.img_fc = nn.Linear(2 * hidden, hidden)
            self.imadpt = nn.Module()
            self.imadpt.q = nn.Parameter(torch.randn(num_q, heads, hidden // heads))
            for name in ("k_proj", "v_proj", "o_proj"):
                setattr(self.imadpt, name, nn.Linear(hidden, hidden, bias=False))

    def adapt(self, image):
        """ViSpec's ImgAdaptor: [n, H] -> [num_q, H]."""
        num_q, heads, d = self.imadpt.q.shape
        q = self.imadpt.q.transpose(0, 1)  # [heads, num_q, d]
        k = self.imadpt.k_proj(image).view(-1, heads, d).transpose(0, 1)
        v = self.imadpt.v_proj(image).view(-1, heads, d).transpose(0, 1)
        out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        return self.imadpt.o_proj(out.transpose(0, 1).reshape(num_q, heads * d))

    def forward(self, hidden, ids, image_token, image_embeds, read_image=True):
        """hidden [L, H]: the target's post-norm states at tokens 0..L-1; ids [L + 1]: the prompt
        and the target's next token. -> outputs [m, H] and the slots [m] they sit at. ViSpec with
        `read_image` False: their inference on LLaVA-1.5, which passes the drafter no image mask."""
        shifted = ids[1:]  # slot j reads token j + 1
        e = self.embed_tokens(shifted)
        is_image = (shifted == image_token) & read_image  # the authors shift the image mask the same way: mask[:, 1:]
        slots = torch.arange(len(shifted))
        if self.kind != "vispec":
            x = self.fc(torch.cat([e, hidden], dim=-1))
            if self.kind == "msd":  # new_hidden_state[image run] = the projected image features, after fc
                x = x.clone()
                x[is_image] = image_embeds
            return self.layers[0](x, slots), slots
        g = torch.zeros(hidden.shape[-1])
        seq, kept, start, used = [], [], 0, 0
        ends = [j for j in range(len(shifted)) if is_image[j] and (j + 1 == len(shifted) or not is_image[j + 1])]
        for end in [e_ + 1 for e_ in ends] + [len(shifted)]:
            run = is_image[start:end]
            text = slots[start:end][~run]
            seq.append(self.fc(torch.cat([e[text], self.img_fc(torch.cat([hidden[text], g.expand(len(text), -1)], -1))],
                                         -1)))
            kept.append(text)
            if run.any():
                n = int(run.sum())
                adapted = self.adapt(image_embeds[used:used + n])
                used += n
                q = len(adapted) - 1
                seq.append(adapted[:-1])  # straight into the layer: no fc, no img_fc
                kept.append(torch.arange(end - q, end))  # the run's last num_q - 1 slots
                g = adapted[-1]
            start = end
        slots_kept = torch.cat(kept)  # ascending: each image's slots come after the text before it
        return self.layers[0](torch.cat(seq), slots_kept), slots_kept


# ---------------------------------------------------------------- checkpoints in the authors' layouts

EAGLE_CONFIG = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                "initializer_range": 0.02, "max_position_embeddings": 2048, "model_type": "llama",
                "num_hidden_layers": 1, "pad_token_id": 0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
                "torch_dtype": "float16", "transformers_version": "4.28.1", "use_cache": True}  # yuhuili/EAGLE-Vicuna-*
MSD_CONFIG = {"architectures": ["LlavaLlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
              "freeze_mm_mlp_adapter": False, "hidden_act": "silu", "image_aspect_ratio": "pad",
              "max_position_embeddings": 4096, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -2, "model_type": "llava", "num_hidden_layers": 1, "pad_token_id": 0,
              "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
              "torch_dtype": "float16", "transformers_version": "4.31.0", "use_cache": True,
              "use_mm_proj": True}  # MSD's EAGLE/eagle/train/llava_v15_7B_config.json, sizes aside
VISPEC_CONFIG = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                 "max_position_embeddings": 4096, "model_type": "llava_next", "num_hidden_layers": 1,
                 "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "float16"}
LAYOUT = {"eagle": (EAGLE_CONFIG, "pytorch_model.bin", torch.float32),
          "msd": (MSD_CONFIG, "pytorch_model.bin", torch.bfloat16),  # DeepSpeed save_16bit_model
          "vispec": (VISPEC_CONFIG, "model.safetensors", torch.float32)}  # accelerate save_state


def released(target, kind, folder, rows=None, seed=0, num_q=2, dtype=None):
    """A random drafter for `target` written as its authors release it, and its re-implementation
    holding the very same (file-dtype) weights. `rows`: embedding rows kept (the original vocabulary
    is shorter than llava-hf's)."""
    text = target.model.config.text_config
    config, file, file_dtype = LAYOUT[kind]
    dtype = dtype or file_dtype
    torch.manual_seed(seed)
    reference = AuthorsDrafter(kind, target.vocab_size, text.hidden_size, text.num_attention_heads,
                               text.intermediate_size, config["rms_norm_eps"], num_q)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.normal_(0, 0.02 if name == "fc.bias" else 1 / math.sqrt(p.shape[-1]))
        reference.layers[0].post_attention_layernorm.weight.uniform_(0.5, 1.5)
        reference.embed_tokens.weight.copy_(target.embed_tokens.weight)
    state = {k: v.detach().to(dtype).contiguous() for k, v in reference.state_dict().items()}
    # the reference computes with what the file holds, except the embedding: mmvsd shares the
    # target's (the file's copy is that, rounded to the file's dtype)
    reference.load_state_dict({k: v.float() for k, v in state.items() if k != "embed_tokens.weight"}, strict=False)
    state["embed_tokens.weight"] = state["embed_tokens.weight"][: rows or target.vocab_size].clone()
    folder.mkdir(parents=True)
    sizes = {"hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
             "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_attention_heads,
             "vocab_size": len(state["embed_tokens.weight"])}
    (folder / "config.json").write_text(json.dumps({**config, **sizes}, indent=2))
    if file.endswith(".bin"):
        torch.save(state, folder / file)
    else:
        save_file(state, str(folder / file), metadata={"format": "pt"})
    return reference


def prompt_pairs(target, rng, prompt="describe the image"):
    encoded = target.encode(random_image(rng), prompt)
    prefill = target.prefill(encoded)
    ids = torch.cat([encoded.input_ids, prefill.logits.argmax()[None]])
    return prefill, ids


@pytest.mark.parametrize("kind, num_q, read_image", [("eagle", 2, True), ("msd", 2, True), ("vispec", 2, True),
                                                     ("vispec", 4, True), ("vispec", 2, False)])
def test_a_released_checkpoint_computes_what_the_authors_code_does(tmp_path, tiny_target, rng, kind, num_q, read_image):
    reference = released(tiny_target, kind, tmp_path / kind, rows=tiny_target.vocab_size - 3, num_q=num_q)
    assert drafter_kind(str(tmp_path / kind)) == kind
    drafter = load_drafter(str(tmp_path / kind), tiny_target)
    assert drafter.kind == kind and drafter.embed_tokens is tiny_target.embed_tokens  # shared, not a copy
    if not read_image:
        drafter.reads_image = False  # the bench's vispec_image=text
    prefill, ids = prompt_pairs(tiny_target, rng)
    image_token = tiny_target.image_token_id
    with torch.no_grad():
        expected, slots = reference(prefill.hidden, ids, image_token, prefill.image_embeds, read_image)
        features, tokens = make_pairs(prefill.hidden, ids)
        image_pairs = make_pairs(prefill.hidden, ids == image_token)[1]
        got = drafter(features[None], tokens[None], image_pairs[None], prefill.image_embeds[None])[0]
    if kind == "vispec" and read_image:  # the image run is num_q - 1 slots, its last ones
        run = (ids[1:] == image_token).nonzero().flatten()
        assert len(slots) == len(tokens) - len(run) + num_q - 1 and set(run[-(num_q - 1):].tolist()) <= set(slots.tolist())
    assert torch.allclose(got[slots], expected, atol=1e-5), (got[slots] - expected).abs().max()
    with torch.no_grad():  # decoding, from the same prompt: the tree's first level is the reference's next-token law
        state = drafter.begin(ids[:-1], prefill)
        tree = drafter.propose(state, features, tokens, TreeConfig())
        logp = torch.log_softmax(tiny_target.lm_head(expected[-1]).float(), dim=-1)
        g = reference.adapt(prefill.image_embeds)[-1] if kind == "vispec" and read_image else 0
    first = tree.depths == 1
    assert first.sum() >= 2 and torch.allclose(tree.scores[first], logp[tree.tokens[first]], atol=1e-5)
    if kind == "vispec":  # g, carried to every later draft step, is the adaptor's last output (or 0 unread)
        assert torch.allclose(state.image_feature, g + torch.zeros_like(state.image_feature), atol=1e-5)


def test_a_bf16_msd_file_loads_into_an_fp32_target_and_vispecs_num_q_comes_from_the_weights(tmp_path, tiny_target):
    released(tiny_target, "vispec", tmp_path / "v", num_q=4)
    drafter = load_drafter(str(tmp_path / "v"), tiny_target)
    assert drafter.spec.extra["num_queries"] == 4 and drafter.imadpt.q.shape[0] == 4
    released(tiny_target, "msd", tmp_path / "m")
    legacy = tmp_path / "legacy"  # torch's pre-zip format (older EAGLE files), which cannot be memory-mapped
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "m" / "config.json").read_text())
    torch.save(torch.load(tmp_path / "m" / "pytorch_model.bin"), legacy / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    assert load_drafter(str(legacy), tiny_target).kind == "msd"
    assert torch.load(tmp_path / "m" / "pytorch_model.bin")["fc.weight"].dtype == torch.bfloat16
    assert load_drafter(str(tmp_path / "m"), tiny_target).fc.weight.dtype == torch.float32


def test_config_bias_false_drops_fcs_bias_as_the_authors_loader_does(tmp_path, tiny_target):
    released(tiny_target, "eagle", tmp_path / "e")
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert "bias" not in config  # as the authors' configs: absent means True, and the file's bias is used
    assert load_drafter(str(tmp_path / "e"), tiny_target).fc.bias.abs().sum() > 0
    (tmp_path / "e" / "config.json").write_text(json.dumps({**config, "bias": False}))
    assert load_drafter(str(tmp_path / "e"), tiny_target).fc.bias.abs().sum() == 0
    _drop_key(tmp_path / "e", "fc.bias")  # and a file without one is then complete
    assert load_drafter(str(tmp_path / "e"), tiny_target).fc.bias.abs().sum() == 0


def test_a_cached_hub_id_resolves_offline(tmp_path, tiny_target, monkeypatch):
    released(tiny_target, "eagle", tmp_path / "e")
    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--EAGLE-tiny" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    (tmp_path / "e").rename(snapshot)
    (hub / "models--someone--EAGLE-tiny" / "refs").mkdir()
    (hub / "models--someone--EAGLE-tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    drafter = load_drafter("someone/EAGLE-tiny", tiny_target)
    assert drafter.kind == "eagle" and drafter.fc.bias.abs().sum() > 0
    with pytest.raises(UserError, match="no hub model of that id in the local hub cache; fetch .* once with `hf download"):
        load_drafter("someone/not-cached", tiny_target)


def _edit_state(folder, edit):
    """Load the folder's pytorch_model.bin, let `edit` change the state dict in place, save it back."""
    state = torch.load(folder / "pytorch_model.bin")
    edit(state)
    torch.save(state, folder / "pytorch_model.bin")


def _other_rows(folder):
    _edit_state(folder, lambda state: state["embed_tokens.weight"][7].add_(1.0))


def _add_key(folder, key, shape):
    _edit_state(folder, lambda state: state.__setitem__(key, torch.zeros(shape)))


def _set_dtype(folder, key, dtype):
    _edit_state(folder, lambda state: state.__setitem__(key, state[key].to(dtype)))


def _drop_key(folder, key):
    _edit_state(folder, lambda state: state.pop(key))


def _edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "pytorch_model.bin").write_bytes((f / "pytorch_model.bin").read_bytes()[:5000]),
     "cannot read pytorch_model.bin, truncated or not a checkpoint"),
    (lambda f: (f / "pytorch_model.bin").unlink(), "missing model.safetensors; .* or a released one"),
    (lambda f: _add_key(f, "medusa_head.0.weight", (4, 4)), r"keys of an unknown layout \(medusa_head.0.weight\)"),
    (lambda f: _drop_key(f, "layers.0.mlp.up_proj.weight"), "missing layers.0.mlp.up_proj.weight for the msd layout"),
    (_other_rows, "embedding row 7 differs from tiny-random's"),
    (lambda f: _add_key(f, "layers.0.self_attn.q_proj.bias", (64,)), "attention has biases .* Qwen2-style"),
    (lambda f: _add_key(f, "layers.0.self_attn.k_proj.weight", (32, 64)),  # grouped key/value heads
     r"layers.0.self_attn.k_proj.weight has shape \[32, 64\], expected \[64, 64\]"),
    (lambda f: _add_key(f, "layers.0.mlp.down_proj.weight", (32, 128)), r"down_proj.weight has shape \[32, 128\]"),
    (lambda f: _set_dtype(f, "fc.weight", torch.int8), "fc.weight is int8, not a float tensor"),
    (lambda f: _edit_config(f, num_attention_heads="32"), "config.json's num_attention_heads is '32', not a number"),
    (lambda f: _edit_config(f, rope_scaling={"type": "linear", "factor": 2.0}), "sets rope_scaling"),
    (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json is not a JSON object"),
    (lambda f: torch.save([1, 2], f / "pytorch_model.bin"), "is not a state dict of tensors"),
])
def test_broken_or_foreign_checkpoints_are_refused_in_one_line(tmp_path, tiny_target, breakage, message):
    released(tiny_target, "msd", tmp_path / "m")
    breakage(tmp_path / "m")
    with pytest.raises(UserError, match=message):
        load_drafter(str(tmp_path / "m"), tiny_target)


def test_a_truncated_safetensors_file_is_refused_in_one_line(tmp_path, tiny_target):
    released(tiny_target, "vispec", tmp_path / "v")
    path = tmp_path / "v" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(UserError, match="cannot read model.safetensors, truncated or not a checkpoint"):
        load_drafter(str(tmp_path / "v"), tiny_target)


def test_a_drafter_of_another_width_is_refused_naming_it(tmp_path, tiny_target):
    from mmvsd.models.llava import LlavaTarget
    from mmvsd.models.tiny import build_tiny_random

    released(tiny_target, "eagle", tmp_path / "e")
    wider = LlavaTarget(*build_tiny_random(hidden_size=96), "wider")
    with pytest.raises(UserError, match="for a target of hidden size 64, wider has 96"):
        load_drafter(str(tmp_path / "e"), wider)


def test_the_bench_reads_vispecs_image_as_text_when_asked(tmp_path, tiny_target):
    from mmvsd.bench import run as bench
    from mmvsd.bench import run_bench
    from mmvsd.config import BenchConfig

    released(tiny_target, "vispec", tmp_path / "v")
    for mode in ("compress", "text"):
        assert bench(["target=tiny-random", f"drafter={tmp_path / 'v'}", f"vispec_image={mode}", "n=1",
                      "max_new_tokens=6", f"json={tmp_path / mode}.json"]) == 0
        assert json.loads((tmp_path / f"{mode}.json").read_text())["identical_outputs"] is True
    with pytest.raises(UserError, match="vispec_image=text applies to ViSpec drafters; drafter eagle is not one"):
        run_bench(BenchConfig(drafter="eagle", vispec_image="text"))


def test_the_bench_refuses_a_broken_released_drafter_with_exit_2(tmp_path, tiny_target):
    released(tiny_target, "eagle", tmp_path / "e")
    _other_rows(tmp_path / "e")
    run = subprocess.run([sys.executable, "-m", "mmvsd.bench", "target=tiny-random", f"drafter={tmp_path / 'e'}",
                          "n=1", "max_new_tokens=4"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "embedding row 7 differs" in run.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- export: mmvsd's drafters in the authors' layouts


@pytest.mark.parametrize("kind", ["eagle", "msd", "vispec"])
def test_export_writes_the_authors_layout_and_loads_back_the_same(tmp_path, tiny_target, rng, kind):
    from mmvsd.drafters.layouts import write_authors

    drafter = build_drafter(kind, tiny_target, seed=4)
    with torch.no_grad():
        drafter.fc.bias.normal_()
    out = write_authors(drafter, tiny_target.embed_tokens.weight, tmp_path / "out", kind)
    file = LAYOUT[kind][1]
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", file])
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == {"eagle": "llama", "msd": "llava", "vispec": "llava"}[kind]
    text = tiny_target.model.config.text_config
    reference = AuthorsDrafter(kind, tiny_target.vocab_size, text.hidden_size, written["num_attention_heads"],
                               text.intermediate_size, written["rms_norm_eps"])
    state = torch.load(out / file) if file.endswith(".bin") else load_file(str(out / file))
    reference.load_state_dict(state)  # strict: exactly the authors' keys and shapes
    back = load_drafter(str(out), tiny_target)
    prefill, ids = prompt_pairs(tiny_target, rng)
    with torch.no_grad():
        features, tokens = make_pairs(prefill.hidden, ids)
        image_pairs = make_pairs(prefill.hidden, ids == tiny_target.image_token_id)[1]
        a = drafter(features[None], tokens[None], image_pairs[None], prefill.image_embeds[None])[0]
        b = back(features[None], tokens[None], image_pairs[None], prefill.image_embeds[None])[0]
        expected, slots = reference(prefill.hidden, ids, tiny_target.image_token_id, prefill.image_embeds)
    assert torch.equal(a, b)
    assert torch.allclose(a[slots], expected, atol=1e-5)


def test_zoo_export_command(tmp_path, tiny_target):
    folder = save_drafter(build_drafter("msd", tiny_target, seed=1), tmp_path / "mine")
    run = subprocess.run([sys.executable, "-m", "mmvsd", "zoo", "export", str(folder), str(tmp_path / "out"),
                          "layout=msd", "target=tiny-random"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "pytorch_model.bin").is_file()
    assert load_drafter(str(tmp_path / "out"), tiny_target).kind == "msd"
    wrong = subprocess.run([sys.executable, "-m", "mmvsd", "zoo", "export", str(folder), str(tmp_path / "o2"),
                            "layout=vispec", "target=tiny-random"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "layout=vispec does not fit a msd drafter" in wrong.stderr
    assert "Traceback" not in wrong.stderr


# ---------------------------------------------------------------- the released shapes, on a LLaVA-1.5-7B-shaped target

RELEASED_7B = {  # hub id -> (layout, embedding rows, file dtype): MSD's from the original vocabulary, ViSpec's llava-hf's
    "lucylyn/MSD-LLaVA1.5-7B": ("msd", 32000, torch.bfloat16),
    "JLKang/ViSpec-llava-1.5-7b-hf": ("vispec", 32064, torch.float32),
}


def write_released_7b(folder, kind, rows, dtype, embed):
    """Random layer weights at the released 7B shapes, in the authors' layout, `embed`'s first rows."""
    hidden, inter, heads = 4096, 11008, 32
    shapes = {"fc.weight": (hidden, 2 * hidden), "fc.bias": (hidden,),
              **{f"layers.0.self_attn.{p}_proj.weight": (hidden, hidden) for p in "qkvo"},
              "layers.0.mlp.gate_proj.weight": (inter, hidden), "layers.0.mlp.up_proj.weight": (inter, hidden),
              "layers.0.mlp.down_proj.weight": (hidden, inter), "layers.0.post_attention_layernorm.weight": (hidden,)}
    if kind == "vispec":
        shapes |= {"img_fc.weight": (hidden, 2 * hidden), "img_fc.bias": (hidden,), "imadpt.q": (2, heads, 128),
                   **{f"imadpt.{p}_proj.weight": (hidden, hidden) for p in "kvo"}}
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) / math.sqrt(shape[-1])).to(dtype) for k, shape in shapes.items()}
    state["layers.0.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
    state["embed_tokens.weight"] = embed[:rows].to(dtype).clone()
    config, file, _ = LAYOUT[kind]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": hidden, "intermediate_size": inter,
                                                    "num_attention_heads": heads, "num_key_value_heads": heads,
                                                    "vocab_size": rows}))
    if file.endswith(".bin"):
        torch.save(state, folder / file)
    else:
        save_file(state, str(folder / file))
    return sum(v.numel() for k, v in state.items() if k != "embed_tokens.weight")


@pytest.mark.slow
@pytest.mark.parametrize("hub_id", list(RELEASED_7B))
def test_released_shapes_load_into_a_llava_7b_shaped_target_and_bench_lossless(tmp_path, hub_id):
    """At the released shapes on `random:llava-1.5-7b` (2 layers): the checkpoint loads, decodes
    token for token as the target alone through fixed trees (tree=auto would decode plainly here), and the process peaks within the weights it holds (target
    and drafter, the embedding once) plus the file being read and the runtime."""
    from mmvsd.models import load_target

    kind, rows, dtype = RELEASED_7B[hub_id]
    target = load_target("random:llava-1.5-7b", layers=2, vision_layers=2)
    target_params = sum(p.numel() for p in target.model.parameters())
    drafter_params = write_released_7b(tmp_path / "d", kind, rows, dtype, target.embed_tokens.weight.detach())
    del target
    file_bytes = sum(f.stat().st_size for f in (tmp_path / "d").iterdir())
    bench = ("import resource, sys; from mmvsd.bench import run; code = run(sys.argv[1:]); "
             "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", bench, "target=random:llava-1.5-7b", "target_layers=2",
                          "vision_layers=2", f"drafter={tmp_path / 'd'}", "n=2", "max_new_tokens=8", "tree=narrow",
                          f"json={tmp_path / 'bench.json'}"], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["identical_outputs"] is True and result["drafter"].endswith("d")
    peak = int(run.stderr.split("peak ")[-1].split()[0])
    bound = 4 * (target_params + drafter_params) + file_bytes + 2 * 2**30
    assert peak < bound, f"peak {peak / 2**30:.1f} GiB over {bound / 2**30:.1f} GiB"


def test_training_starts_from_a_released_drafter(tmp_path, tiny_target):
    """`mmvsd train drafter=FOLDER` on an author's checkpoint: after one step at a vanishing lr the
    drafter it writes (in mmvsd's layout) holds the released weights, so VSD on a release starts there."""
    from mmvsd.train import run as train

    released(tiny_target, "vispec", tmp_path / "v", rows=tiny_target.vocab_size - 3)
    out = tmp_path / "run"
    assert train(["target=tiny-random", f"drafter={tmp_path / 'v'}", "describe_share=0", "batch_size=2", "steps=1",
                  "lr=1e-9", "warmup_steps=0", "eval_n=0", f"output_dir={out}"]) == 0
    start, trained = load_drafter(str(tmp_path / "v"), tiny_target), load_drafter(str(out / "drafter"), tiny_target)
    assert trained.kind == "vispec" and trained.spec.extra == start.spec.extra
    for key, value in start.state_dict().items():
        assert torch.allclose(value, trained.state_dict()[key], atol=1e-6), key
