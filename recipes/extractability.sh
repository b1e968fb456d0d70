#!/usr/bin/env bash
# Extractability and evidence (arXiv 2311.04046) with online-code MDL probes: docs/mdl/README.md.
# 2-core CPU: the tiny preset from scratch (3 seeds) 7.4 min; pretraining 5.9 min; the reduced grid from the
# pretrained model (2 seeds) 6 min 6 s. Copy mdl_table.md and the two figures of runs/extractability/mdl to docs/mdl/.
set -euo pipefail
# the tiny preset from scratch: 4 targets and the control, 3 probe seeds, 3 RL seeds (the main job's last step)
python probe_mdl.py --out runs/extractability/mdl
# the pretrained model the policy starts from in the reduced grid
python train_pretrain.py --out runs/extractability/pretrain
# from the pretrained model: 3 targets, evidence 0 and 0.1, 2 RL seeds and 2 probe seeds
python probe_mdl.py --init runs/extractability/pretrain --targets contains_1,prefix_duplicate,first_last --evidence 0,0.1 --seeds 2 --probe-seeds 2 --out runs/extractability/mdl_pre
