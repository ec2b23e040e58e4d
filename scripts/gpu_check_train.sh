#!/usr/bin/env bash
# GPU check of drafter training at LLaVA-1.5-7B's real shapes (about 10 minutes on one H100-class GPU).
# One GPU: recipe llava7b_msd on random:llava-1.5-7b at full depth, bf16, 20 steps; prints step time,
# tokens/s and peak memory (the last lines of each run), next to dry_run's memory estimate.
# Two or more GPUs: the same under FSDP and under DeepSpeed ZeRO-2 (the shipped accelerate configs).
# Usage: bash scripts/gpu_check_train.sh [OUT]      (needs: pip install -e . ; deepspeed for the ZeRO run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check_train}
export HF_HUB_OFFLINE=1
python - "$OUT/data" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image
folder = Path(sys.argv[1]); (folder / "images").mkdir(parents=True, exist_ok=True)
for i in range(64):
    Image.new("RGB", (336 + 7 * i, 336), (4 * i, 255 - 4 * i, 128)).save(folder / "images" / f"{i}.jpg")
turns = lambda i: [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                   {"from": "gpt", "value": " ".join(["A flat colour fills the picture."] * (8 + i % 24))}]
(folder / "llava.json").write_text(json.dumps([{"image": f"{i}.jpg", "conversations": turns(i)} for i in range(64)]))
(folder / "sharegpt.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "Say something."},
    {"from": "gpt", "value": " ".join(["Words follow words."] * (10 + i))}]} for i in range(64)]))
PY
ARGS=(recipe=llava7b_msd target=random:llava-1.5-7b "data=$OUT/data/llava.json" "text_data=$OUT/data/sharegpt.json"
      "image_folder=$OUT/data/images" steps=20 text_first_steps=5 text_ramp_steps=5 warmup_steps=2 checkpoint_every=10
      eval_n=2 eval_max_new_tokens=64)
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
echo "== $GPUS GPU(s); memory estimate for one process:"
python -m mmvsd.train "${ARGS[@]}" dry_run=true | grep "^#"
echo "== one GPU"
rm -rf "$OUT/one"
CUDA_VISIBLE_DEVICES=0 python -m mmvsd.train "${ARGS[@]}" "output_dir=$OUT/one" 2>&1 | tr '\r' '\n' | grep -E "^(trained|eval|error)"
if [ "$GPUS" -ge 2 ]; then
  for config in fsdp deepspeed; do
    echo "== $GPUS GPUs, $config"
    rm -rf "$OUT/$config"
    accelerate launch --config_file "recipes/accelerate/$config.yaml" --num_processes "$GPUS" -m mmvsd.train \
      "${ARGS[@]}" "output_dir=$OUT/$config" 2>&1 | tr '\r' '\n' | grep -E "^(trained|eval|error)" || true
  done
fi
