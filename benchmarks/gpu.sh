#!/usr/bin/env bash
# One prepared run on a GPU machine: the CUDA tests, then benchmarks/perf.py on the card.
# Usage (repository root, cnnlens and the three toolkits importable):
#   bash benchmarks/gpu.sh OUTDIR
# Writes OUTDIR/cuda-tests.log, OUTDIR/demo-cuda.png (cnnlens demo --device cuda), OUTDIR/gpu.md|json (gradient CAMs and gradient methods on
# efficientnet_lite0, resnet50, vgg11) and OUTDIR/gpu-many.md|json (many-forward methods on
# efficientnet_lite0), OUTDIR/gpu-overhead.txt and OUTDIR/gpu-ab.md (benchmarks/gpu_ab.py): 8 files. Each
# step has a time limit; they add up to 570 s (the whole run took 4.7 and 5.8 minutes on two H200 machines).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CNNLENS_OFFLINE=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
nvidia-smi -L || true
$py -c "import torch, captum, pytorch_grad_cam, flashtorch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 100 $py -m pytest -q -p no:cacheprovider -rfs tests/test_cuda.py "tests/test_activmax.py" \
    "tests/test_reliability.py::test_model_on_other_device_than_input" -k "cuda or other_device" 2>&1 \
    | tee "$out/cuda-tests.log" | tail -40
# the README's main job on the card
timeout 45 $py -m cnnlens.cli demo --device cuda --out "$out/demo-cuda.png" --overwrite 2>&1 | tail -15
timeout 190 $py benchmarks/perf.py --device cuda --threads 4 --groups cams,gradients --reps 21 \
    --budget-s 150 --out "$out/gpu.md" --json "$out/gpu.json" 2>&1 | grep -v '^\[' | tail -80
timeout 90 $py benchmarks/perf.py --device cuda --threads 4 --groups many --many-reps 3 \
    --budget-s 60 --out "$out/gpu-many.md" --json "$out/gpu-many.json" 2>&1 | grep -v '^\[' | tail -40
# where a cnnlens call spends its time beyond the toolkit's own, on the card (cProfile), and the
# guard's fixed cost on this machine's CPU with the models on the card
timeout 80 $py benchmarks/gpu_overhead.py --device cuda --calls 30 --models efficientnet_lite0,resnet50,vgg11 \
    --methods saliency,gradcam,pgc-gradcam > "$out/gpu-overhead.txt" 2>&1
timeout 25 $py benchmarks/guard_cost.py --device cuda --calls 100 >> "$out/gpu-overhead.txt" 2>&1
grep -E "^## |guard " "$out/gpu-overhead.txt"
# which ingredient of explain() costs what on the card (A/B against Captum direct)
timeout 40 $py benchmarks/gpu_ab.py --device cuda --models efficientnet_lite0,resnet50,vgg11 --rounds 30 > "$out/gpu-ab.md" 2>&1
grep -E "^#|explain" "$out/gpu-ab.md"
