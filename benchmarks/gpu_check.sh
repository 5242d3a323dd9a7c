#!/usr/bin/env bash
# One short GPU check for a session that is lent a device machine (run it there once):
#   GPU images/s of the batched estimators, then a short ME-Net training run with --amp.
# The device image has PyTorch (CUDA), numpy, scipy, matplotlib, tqdm, pyyaml and pillow, but
# no cvxpy and no Debian data: copy the Fashion-MNIST files into data/fashion-mnist/ (ignored
# by git) and carry that folder, e.g.
#   mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/
#   run(command="bash benchmarks/gpu_check.sh", carry=["data"])
# Record the printed figures, with the card's name, in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export MENET_DATA_DIR="${MENET_DATA_DIR:-$PWD/data/fashion-mnist}"
out="${OUT:-/tmp/menet-gpu-check}"
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, 'device', torch.cuda.get_device_name(0))"
python3 benchmarks/estimation.py --device cuda --no-reference --batch 4096 2>&1 | tee "$out/estimation-gpu.txt"
python3 benchmarks/estimation.py --device cpu --no-reference --batch 4096 2>&1 | tee "$out/estimation-cpu.txt"
python3 -m menet train recipes/fashion-mnist-quick.yaml --device cuda --amp --runs "$out/runs" --quiet \
  --set train_limit=60000 2>&1 | tee "$out/train-gpu.txt"
