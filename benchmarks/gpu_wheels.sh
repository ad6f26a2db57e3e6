#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs beyond a bare GPU image, downloaded for that image.
#
#   benchmarks/gpu_wheels.sh DIR [PYTHON_VERSION]     (PYTHON_VERSION defaults to 3.12)
#
# The image (docs/distributed.md) has torch, transformers 5.17, accelerate 1.15, peft, tokenizers,
# safetensors, pyarrow and triton, and no network. The training path also imports trl, which
# imports datasets, which imports pandas: these and their own imports that the image lacks are
# fetched here, one pinned version each, as manylinux x86_64 wheels without dependency resolution
# (`--no-deps`), to be installed with `pip install --no-index --no-deps --target`. Prints each wheel
# and the total, and fails above 64 MiB.
set -euo pipefail
if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 DIR [PYTHON_VERSION]" >&2
    exit 2
fi
dir=$1
python_version=${2:-3.12}
limit=$((64 * 1024 * 1024))
wheels=(
    trl==1.16.0           # SFTConfig/SFTTrainer, which DiffusionSFTConfig/Trainer extend
    datasets==5.2.0       # imported by trl's trainers and by sft's data loading
    pandas==3.1.1         # imported by datasets
    python-dateutil==4.0.0  # imported by pandas
    tzdata==2026.6        # pandas' time zones
    dill==0.4.1           # imported by datasets
    multiprocess==0.70.19 # imported by datasets
    xxhash==4.1.0         # imported by datasets
)
mkdir -p "$dir"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir" \
    --implementation cp --python-version "$python_version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    "${wheels[@]}"
ls -l "$dir"/*.whl | awk '{printf "%10d  %s\n", $5, $NF}'
total=$(cat "$dir"/*.whl | wc -c)
echo "total: $total bytes ($((total / 1024 / 1024)) MiB) in $(ls "$dir"/*.whl | wc -l) wheels"
if ((total > limit)); then
    echo "over the 64 MiB the check may carry" >&2
    exit 1
fi
