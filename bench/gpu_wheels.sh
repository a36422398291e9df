#!/usr/bin/env bash
# Downloads, on a machine with pip access, the wheels that bench/gpu_checks.sh installs on a lent
# GPU machine that cannot reach a package index: the packages emocap_jax and the benchmarks import
# that the machine's image lacks (grain, ml_collections, simplejpeg, ...), plus flax, optax and
# orbax-checkpoint at the versions the tests run with. JAX itself (with its CUDA plugin) and torch
# stay the image's. The versions are requirements.txt's; the other packages are pinned below.
#
#     bash bench/gpu_wheels.sh             # -> .whl/ (ignored by git; about 15 MB)
#     PYTHON_VERSION=3.11 bash bench/gpu_wheels.sh .whl311
#
# The lent H200's python3 is 3.12 (/work/.library/device/KINDS.md in this workplace).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python_version=${PYTHON_VERSION:-3.12}

# Pinned in requirements.txt: take the version from there so the two cannot drift apart.
from_requirements=(grain ml_collections simplejpeg google-crc32c ftfy tensorflow-datasets
                   tensorboardX flax optax orbax-checkpoint)
# Needed beside them and missing from the image (grain's array-record and portpicker, ftfy's
# wcwidth), and open_clip for the comparison rows of bench/train_step.py.
extra=(array-record==0.8.6 portpicker==1.6.0 wcwidth==0.9.4 open_clip_torch==3.3.0)

pins=()
for name in "${from_requirements[@]}"; do
    line=$(grep -i -E "^${name}==" requirements.txt) || {
        echo "error: ${name} is not pinned in requirements.txt" >&2; exit 1; }
    pins+=("$line")
done

platforms=()
for platform in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
                manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
                manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
    platforms+=(--platform "$platform")
done

rm -rf "$dest" && mkdir -p "$dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp "${platforms[@]}" -d "$dest" "${pins[@]}" "${extra[@]}"
echo "$(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $dest for Python $python_version:"
ls "$dest"
