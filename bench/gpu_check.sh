#!/bin/sh
# The GPU check (bench/gpu_check.py): NVENC and CUDA batched transcription end to end on the real stack.
# Prints "SKIPPED: no NVIDIA GPU (...)" and exits 0 on a machine without one. Arguments go to the module
# (--cpu: a dry run of the same steps with libx264 and CPU ASR; --json FILE: the figures as JSON).
set -eu
root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m bench.gpu_check "$@"
