#!/usr/bin/env bash
# One short GPU check for a session that is lent a device machine (run it there once):
#   GPU images/s of the batched estimators, the attack benchmark on the GPU, a short ME-Net
#   training run with --amp on the full Fashion-MNIST training set, and a BPDA + EOT
#   evaluation of it with multi-draw scoring.
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
python3 -c "import torch; print('torch', torch.__version__, 'device', torch.cuda.get_device_name(0))" | tee "$out/device.txt"
python3 benchmarks/estimation.py --device cuda --no-reference --batch 4096 2>&1 | tee "$out/estimation-gpu.txt"
python3 benchmarks/attacks.py --device cuda --no-reference --batch 256 --estimation-batch 4096 2>&1 | tee "$out/attacks-gpu.txt"
python3 -m menet train recipes/train/fashion-mnist-quick.yaml --device cuda --amp --runs "$out/runs" --quiet \
  --set train_limit=null --set defense.p_start=0.3 --set defense.p_end=0.5 --set epochs=3 2>&1 | tee "$out/train-gpu.txt"
python3 -m menet attack "$out/runs/fashion-mnist-quick" --device cuda --attack pgd --eps 0.1 --step-size 0.01 \
  --steps 100 --n 1000 --draws 3 --tag pgd100 --quiet 2>&1 | tee "$out/attack-gpu.txt"
python3 -m menet attack "$out/runs/fashion-mnist-quick" --device cuda --attack pgd --eps 0.1 --step-size 0.01 \
  --steps 100 --eot 10 --n 1000 --draws 3 --tag pgd100-eot10 --quiet 2>&1 | tee -a "$out/attack-gpu.txt"
