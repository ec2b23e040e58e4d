"""An offline cache of the target's features, for targets whose forward pass is the cost.

`feature_cache=DIR`: micro-batch i's target features go to DIR/i.safetensors the first time
they are computed; any later run over the same data (another drafter kind, more steps, a VSD
run, a resumed run) reads them instead of running the target. What the cache was written for
(target fingerprint and every setting that shapes the data stream) is kept in DIR/meta.json,
and a run with other settings is refused rather than silently fed the wrong features.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmvsd.config import TrainConfig
from mmvsd.errors import UserError
from mmvsd.files import ordinary_modes
from mmvsd.training.features import DraftBatch, draft_batch

# Settings that change which conversations micro-batch i holds: tagged `opt(..., data=True)`.
DATA_KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("data"))


class FeatureCache:
    """Process `rank` of `processes` keeps its own share of each micro-batch (see `training_batch`)."""

    def __init__(self, folder: str | Path, target, cfg, rank: int = 0, processes: int = 1):
        self.folder, self.target = Path(folder), target
        self.suffix = f"-{rank}of{processes}" if processes > 1 else ""
        meta = {"target": target.fingerprint(), "target_id": cfg.target, "dtype": cfg.dtype, "processes": processes,
                **{k: getattr(cfg, k) for k in DATA_KEYS}}
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            stored = json.loads(meta_path.read_text())
            changed = sorted(k for k in meta.keys() | stored.keys() if stored.get(k) != meta.get(k))
            if changed:
                raise UserError(f"feature_cache {self.folder} was written with other settings ({', '.join(changed)}); "
                                "use another folder, or the settings it was written with")
        else:  # every process may get here at once: each writes the same file, atomically
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = meta_path.with_name(f".meta.json.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, meta_path)

    def get(self, index: int, make_batch) -> DraftBatch:
        """Micro-batch `index`'s features: from the cache, or from `make_batch()` (a target pass),
        then stored."""
        path = self.folder / f"{index:08d}{self.suffix}.safetensors"
        if path.is_file():
            t = load_file(str(path), device=str(self.target.device))
            return draft_batch(self.target, t["hidden"], t["input_ids"], t["attention_mask"], t["image_embeds"],
                               t["loss_mask"])
        batch = make_batch()
        hidden = torch.cat([batch.features, batch.next_features[:, -1:]], dim=1)  # undoes make_pairs: [B, T, H]
        tensors = {"hidden": hidden, "input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                   "image_embeds": batch.image_embeds, "loss_mask": batch.loss_mask}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        ordinary_modes(tmp)
        os.replace(tmp, path)
        return batch
