#!/usr/bin/env bash
# GPU check of batched decoding at LLaVA-1.5-7B's real shapes (issue 26; a few minutes on one H100-class GPU).
# random:llava-1.5-7b at full depth in bf16 on CUDA, 576 image tokens + ~400-token prompts, drafter=oracle at
# tau ~4 (a chain of depth 6, each token right with p = 0.8: the engine's own cost, no drafter network), at
# batch_size 1, 8 and 32: throughput of the target alone and speculative at the same B, latency and time to first
# token p50/p90, engine efficiency. The JSON files land in OUT. Settings can be overridden, which is how CI runs it
# at tiny size on a CPU:
#   TARGET=tiny-random DEVICE=cpu DTYPE=float32 PROMPT_CHARS=120 N=6 SIZES="1 3" bash scripts/gpu_check_batch.sh /tmp/out
# Usage: bash scripts/gpu_check_batch.sh [OUT]      (needs: pip install -e .)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check_batch}
TARGET=${TARGET:-random:llava-1.5-7b} DEVICE=${DEVICE:-cuda} DTYPE=${DTYPE:-bfloat16}
PROMPT_CHARS=${PROMPT_CHARS:-400} N=${N:-64} MAX_NEW=${MAX_NEW:-128} SIZES=${SIZES:-"1 8 32"}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
python - "$OUT" "$PROMPT_CHARS" "$N" <<'PY'
import json, random, sys
from pathlib import Path
from PIL import Image
out, chars, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
words = "the report lists a red bar a blue line a green area labels values axes and a title".split()
with open(out / "inputs.jsonl", "w") as f:
    for i in range(n):  # prompts of different lengths: rows of their own lengths in every batch
        Image.new("RGB", (336, 336), (40 * i % 256, 120, 200)).save(out / f"{i}.png")
        text = " ".join(rng.choice(words) for _ in range(chars // 4))[: rng.randint(chars // 2, chars)]
        f.write(json.dumps({"image": f"{i}.png", "prompt": f"Read this, then describe the image. {text}"}) + "\n")
PY
for b in $SIZES; do
  echo "== batch_size=$b"
  if ! python -m mmvsd.bench target="$TARGET" device="$DEVICE" dtype="$DTYPE" data="$OUT/inputs.jsonl" \
      max_new_tokens="$MAX_NEW" drafter=oracle oracle.accept=0.8 tree=chain tree.depth=6 batch_size="$b" \
      json="$OUT/batch_$b.json" > "$OUT/batch_$b.txt" 2> "$OUT/batch_$b.err"; then
    tail -n 3 "$OUT/batch_$b.err"; exit 1
  fi
  grep -E "bench:|target alone|speculative|speed-up|latency|first token|tau|identical|decode step|verify step|efficiency" \
    "$OUT/batch_$b.txt"
done
