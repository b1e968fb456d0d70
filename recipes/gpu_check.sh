#!/usr/bin/env bash
# The GPU path, end to end, in one table: docs/engine/README.md#gpu. About 5 minutes on one GPU (2 GPUs add the
# torchrun check). On a machine without a CUDA GPU it stops at once and says so.
set -euo pipefail
# engine vs naive sampler, bf16 logprobs, --resume, bench with --compile off and on, bf16 + --compile runs, torchrun
python -m nanorl.gpu_check --out runs/gpu_check/work
