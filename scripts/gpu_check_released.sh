#!/usr/bin/env bash
# GPU check of the authors' drafter layouts (issue 24; about 5 minutes on one H100-class GPU).
# 1. Each layout (eagle, msd, vispec) at the released LLaVA-1.5-7B shapes, written in the authors'
#    layout (as `mmvsd zoo export` writes it) from an untrained drafter, loaded as a released folder, benched on
#    random:llava-1.5-7b (all 32 layers, bf16): that the layouts run, and what the engine costs with
#    each (draft / verify / decode ms); random weights, so tau means nothing here.
# 2. The real checkpoints, when their files are in the local hub cache (nothing is downloaded):
#    lucylyn/MSD-LLaVA1.5-7B and -13B on llava-hf/llava-1.5-7b-hf / -13b-hf, JLKang/ViSpec-llava-1.5-7b-hf
#    on llava-hf/llava-1.5-7b-hf, the latter with its image compressed (as the authors trained it) and
#    read as text (as their inference runs it) (fetch them first with `hf download ID`). Compare speed-ups with MSD's
#    paper (2.29x / 2.46x on LLaVA-1.5 7B / 13B, their engine, greedy); ViSpec reports LLaVA-1.6, not 1.5.
# Usage: bash scripts/gpu_check_released.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check_released}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
for kind in eagle msd vispec; do
  echo "== $kind layout at the released 7B shapes, random weights"
  rm -rf "$OUT/$kind"
  python - "$kind" "$OUT/$kind" <<'PY'
import sys
from pathlib import Path
from mmvsd.drafters import build_drafter
from mmvsd.drafters.layouts import write_authors
from mmvsd.models import load_target
target = load_target("random:llava-1.5-7b", "bfloat16", "cuda")
write_authors(build_drafter(sys.argv[1], target), target.embed_tokens.weight, Path(sys.argv[2]), sys.argv[1])
PY
  python -m mmvsd.bench target=random:llava-1.5-7b dtype=bfloat16 device=cuda "drafter=$OUT/$kind" n=4 \
    max_new_tokens=64 "json=$OUT/$kind.json" 2>&1 | grep -E "^(  |error)" || true
done
for run in "llava-hf/llava-1.5-7b-hf lucylyn/MSD-LLaVA1.5-7B" "llava-hf/llava-1.5-13b-hf lucylyn/MSD-LLaVA1.5-13B" \
           "llava-hf/llava-1.5-7b-hf JLKang/ViSpec-llava-1.5-7b-hf vispec_image=compress" \
           "llava-hf/llava-1.5-7b-hf JLKang/ViSpec-llava-1.5-7b-hf vispec_image=text"; do
  set -- $run
  name=$(basename "$2")${3:+-${3#vispec_image=}}
  echo "== $2 on $1 ${3:-} (real weights, when cached)"
  python -m mmvsd.bench "target=$1" "drafter=$2" ${3:-} dtype=float16 device=cuda n=8 max_new_tokens=256 \
    "json=$OUT/$name.json" 2>&1 | grep -E "^(  |error)" || true
done
