#!/usr/bin/env bash
# GPU check of the decoding engine at LLaVA-1.5-7B's real shapes (a few minutes on one H100-class GPU).
# random:llava-1.5-7b at full depth in bf16 on CUDA, 576 image tokens + ~1000-token prompts:
#   1. drafter=oracle at tau ~4 (a chain of depth 6, each token right with p = 0.8): the engine alone;
#   2. an untrained EAGLE drafter over the full vocabulary, and over a reduced draft vocabulary.
# Each prints decode / verify / draft ms, the per-step breakdown, engine_efficiency and the speed-up;
# the JSON files land in OUT. Settings can be overridden, which is how CI runs it at tiny size on a CPU:
#   TARGET=tiny-random DEVICE=cpu DTYPE=float32 PROMPT_CHARS=200 DRAFT_VOCAB=64 bash scripts/gpu_check_engine.sh /tmp/out
# Usage: bash scripts/gpu_check_engine.sh [OUT]      (needs: pip install -e .)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check_engine}
TARGET=${TARGET:-random:llava-1.5-7b} DEVICE=${DEVICE:-cuda} DTYPE=${DTYPE:-bfloat16}
PROMPT_CHARS=${PROMPT_CHARS:-1000} N=${N:-4} MAX_NEW=${MAX_NEW:-128} DRAFT_VOCAB=${DRAFT_VOCAB:-8192}
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
    for i in range(n):
        Image.new("RGB", (336, 336), (40 * i % 256, 120, 200)).save(out / f"{i}.png")
        text = " ".join(rng.choice(words) for _ in range(chars // 4))[:chars]  # one token per byte here
        f.write(json.dumps({"image": f"{i}.png", "prompt": f"Read this, then describe the image. {text}"}) + "\n")
PY
COMMON=(target="$TARGET" device="$DEVICE" dtype="$DTYPE" data="$OUT/inputs.jsonl" n="$N" max_new_tokens="$MAX_NEW")
run() {  # name, extra bench keys...
  local name=$1; shift
  echo "== $name"
  if ! python -m mmvsd.bench "${COMMON[@]}" "$@" json="$OUT/$name.json" > "$OUT/$name.txt" 2> "$OUT/$name.err"; then
    tail -n 3 "$OUT/$name.err"; exit 1
  fi
  grep -E "bench:|speed-up|tau|identical|prefill|decode step|verify step|breakdown|efficiency" "$OUT/$name.txt"
}
run oracle drafter=oracle oracle.accept=0.8 tree=chain tree.depth=6
run eagle drafter=eagle tree=chain tree.depth=6
run eagle_draft_vocab drafter=eagle draft_vocab="$DRAFT_VOCAB" tree=chain tree.depth=6
