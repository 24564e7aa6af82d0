#!/usr/bin/env bash
# The device check for a session that the `device` tool lends a GPU (one H100 or H200, 15 minutes
# of device time in all). Prepared on 2026-11-30 on a machine without a GPU: NOT YET RUN.
# It writes into $OUT (the device tool's folder; else bench/results):
#   1. roofline + eval: the card's measured bf16 matmul and convolution peaks, and PGD-EOT images/s
#      at the quick and paper architectures under bf16 autocast (the library's default on CUDA),
#      each eval row with its fraction_of_conv_peak of that bf16 peak (issue 6's GPU figure);
#   2. precision: the same attack's speed in float32 and bf16, and the bf16 gradient's fidelity
#      on the quick RT2 + AToP checkpoints when they are carried (a quick run_all.sh makes them).
# Before the call, here, once: the device image has PyTorch (not our pin) but no torchattacks:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl torchattacks==3.5.1
# then: run(command="bash scripts/gpu_check.sh", timeout_s=540, carry=[".whl",
#   "checkpoints/quick/cifar10/defense-gan-rt2-atop.pt", "checkpoints/quick/cifar10/defense-gan-
#   rt2-atop.json", and the same two for defense-ae-rt2-atop]) (all of checkpoints/quick is
#   69 MB, over the 64 MiB a call carries), and give_back unless rerunning at once.
set -uo pipefail
out="${OUT:-bench/results}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# whole evaluation batches (64 images, the profiles' batch_size): the CPU defaults time 16 paper ones
sizes=(--archs quick paper --images-quick 256 --images-paper 64 --budget-s 10)
timeout 300 python3 -m bench roofline eval --device cuda --amp "${sizes[@]}" \
    --out-dir "$out" --tag cuda 2>&1 | tee "$out/bench-eval.log"
timeout 180 python3 -m bench precision --device cuda "${sizes[@]}" \
    --out-dir "$out" --tag cuda 2>&1 | tee "$out/bench-precision.log"
