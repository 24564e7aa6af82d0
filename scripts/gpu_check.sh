#!/usr/bin/env bash
# Measure this project on one CUDA GPU in a few minutes, for docs/performance.md:
#   1. roofline + eval: the card's measured bf16 matmul and convolution peaks, and PGD-EOT images/s
#      at the quick and paper architectures under bf16 autocast (the library's default on CUDA),
#      each eval row with its fraction_of_conv_peak of that bf16 peak;
#   2. precision: the same attack's speed in float32 and bf16, and the bf16 gradient's fidelity
#      on the quick RT2 + AToP checkpoints when present (a quick run_all.sh makes them);
#   3. stages: one epoch of each paper-profile training stage (bf16), timed, with its share of
#      the H100's bf16 peak: the measurement that replaces `python -m bench cost`'s assumed share.
# Results go to $OUT (default bench/results). Made for an offline GPU machine that has PyTorch but
# not this project's other dependencies: put torchattacks' wheel in .whl/ first, where online:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl torchattacks==3.5.1
# then copy the checkout (with .whl/ and, optionally, checkpoints/quick/cifar10/defense-*-rt2-atop.*)
# to the GPU machine and run `bash scripts/gpu_check.sh` from its root.
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
timeout 150 python3 -m bench stages --device cuda --amp --repeats 3 --budget-s 10 \
    --out-dir "$out" --tag cuda 2>&1 | tee "$out/bench-stages.log"
