#!/usr/bin/env bash
# The sampling engine's speed against the engine before the sampler work (3bafffc), side by side: docs/engine/README.md.
# Needs that commit checked out beside this one first: git worktree add /tmp/old 3bafffc
# Run it on an idle machine (2-core CPU: its wall time was not recorded).
set -euo pipefail
# peak, training MFU, engine vs naive, one GRPO step, and 15 rounds of this engine vs 3bafffc's (bench seed 0)
python -m nanorl.bench --baseline /tmp/old --rounds 15 --out docs/engine/bench.json
