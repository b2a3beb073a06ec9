#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md: mmm against Hugging Face at BERT-base and ViT-B/16
# sizes, bf16 autocast, on one CUDA device, then a table of the results.
#
#   bash scripts/gpu_bench.sh [STEPS] [WARMUP]     # default 20 timed steps after 5
#
# Runs from the repository root (or any directory; it finds the scripts beside it). Text:
# synthetic batches of 64 x 512 (the step alone: no loader, no padding); vision: 64 images
# of 224 px, 75% hidden. Each script measures the device's bf16 torch.matmul rate and
# reports MFU against it. About 3 minutes on an H100-class GPU; writes logs to
# gpu_bench_logs/. DEVICE, TEXT_PRESET, VISION_PRESET and GEMM override the defaults (cuda,
# bert-base, vit-b16, 8192): tests/test_scripts.py runs it at tiny sizes on the CPU.
set -euo pipefail
STEPS=${1:-20}
WARMUP=${2:-5}
DEVICE=${DEVICE:-cuda}
TEXT_PRESET=${TEXT_PRESET:-bert-base}
VISION_PRESET=${VISION_PRESET:-vit-b16}
GEMM=${GEMM:-8192}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
LOGS=gpu_bench_logs
mkdir -p "$LOGS"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
else
  echo "$DEVICE (no nvidia-smi)" | tee "$LOGS/gpu.txt"
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$LOGS/gpu.txt"

python "$HERE/bench_text.py" --mode synthetic --preset "$TEXT_PRESET" --device "$DEVICE" \
  --precision bf16-mixed --steps "$STEPS" --warmup "$WARMUP" --gemm_size "$GEMM" | tee "$LOGS/text.txt"
python "$HERE/bench_vision.py" --preset "$VISION_PRESET" --device "$DEVICE" --precision bf16-mixed \
  --steps "$STEPS" --warmup "$WARMUP" --gemm-size "$GEMM" | tee "$LOGS/vision.txt"

echo
echo "| benchmark (bf16-mixed, $(head -1 "$LOGS/gpu.txt" | cut -d, -f1)) | mmm | Hugging Face | ratio |"
echo "|---|---|---|---|"
python - "$LOGS" "$TEXT_PRESET" "$VISION_PRESET" <<'PY'
import re, sys
from pathlib import Path

logs = Path(sys.argv[1])
text = (logs / "text.txt").read_text()
rows = {
    name: f"{ms} ms/step, {rate} real tokens/s, MFU {mfu}"
    for name, ms, rate, mfu in re.findall(
        r"^\s+(mmm|hf)\s+([\d.]+) ms/step.*?(\d+) real tokens/s\s+MFU\s+([\d.]+%)", text, re.M
    )
}
ratio = re.search(r"^\s+mmm .*\(([\d.]+)x hf\)", text, re.M)
print(f"| text, {sys.argv[2]} (synthetic batch) | {rows.get('mmm')} | {rows.get('hf')} | "
      f"{ratio.group(1) if ratio else '?'}x |")
vision = (logs / "vision.txt").read_text()
mmm = re.search(r"^mmm MAE step\s+([\d.]+ ms\s+MFU\s+[\d.]+%)", vision, re.M)
hf = re.search(r"^HF ViTMAEForPreTraining step\s+([\d.]+ ms\s+MFU\s+[\d.]+%)", vision, re.M)
speed = re.search(r"^HF / mmm: ([\d.]+)x", vision, re.M)
print(f"| MAE, {sys.argv[3]} | {mmm and mmm.group(1)} | {hf and hf.group(1)} | "
      f"{speed.group(1) if speed else '?'}x |")
PY
