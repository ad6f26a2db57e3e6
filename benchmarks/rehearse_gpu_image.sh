#!/usr/bin/env bash
# A CPU rehearsal of benchmarks/gpu_check.py on the bare GPU image (docs/distributed.md).
#
#   benchmarks/rehearse_gpu_image.sh [VENV]      (default VENV: /tmp/dlm-sft-gpu-image-venv)
#
# VENV stands for the image: this machine's CPU torch wheel, transformers 5.17.0, accelerate 1.15.0,
# peft, tokenizers, safetensors, pyarrow; no trl, datasets or pandas (created when missing, refused
# when it has them). The branch's committed state is cloned (a plain checkout, never installed),
# benchmarks/gpu_wheels.sh fetches the carried wheels for VENV's Python, they are installed as on
# the image (`--no-index --no-deps --target`, on PYTHONPATH), and `gpu_check.py --smoke` runs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/tmp/dlm-sft-gpu-image-venv}
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q torch==2.13.0
    "$venv/bin/python" -m pip install -q transformers==5.17.0 accelerate==1.15.0 peft tokenizers safetensors pyarrow
fi
for absent in trl datasets pandas; do
    if "$venv/bin/python" -c "import $absent" 2>/dev/null; then
        echo "$venv has $absent: not the image" >&2
        exit 1
    fi
done
work=$(mktemp -d /tmp/gpu-image-rehearsal.XXXXXX)
git clone -q --branch "$(git -C "$repo" rev-parse --abbrev-ref HEAD)" "$repo" "$work/checkout"
python_version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$work/checkout/benchmarks/gpu_wheels.sh" "$work/wheels" "$python_version"
"$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" "$work"/wheels/*.whl
cd "$work/checkout"
echo "+ PYTHONPATH=$work/site $venv/bin/python benchmarks/gpu_check.py --smoke   (in $work/checkout)"
PYTHONPATH=$work/site "$venv/bin/python" benchmarks/gpu_check.py --smoke
