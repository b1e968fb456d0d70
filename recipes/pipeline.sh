#!/usr/bin/env bash
# The main job: every stage on its CPU default (seed 1337), into runs/. README's pipeline command.
# docs/rm/README.md has its results, and recipes/overoptimisation.sh its RL stages for seeds 1-3.
set -euo pipefail
python train_pretrain.py --out runs/pretrain
python train_rm.py --init runs/pretrain --out runs/rm --label-noise 0.25
python train_ppo.py --init runs/pretrain --reward rm --rm runs/rm --out runs/ppo_rm
python rlp.py --init runs/pretrain --rm runs/rm --policy runs/ppo_rm --out runs/rm_rlp
python train_ppo.py --init runs/pretrain --reward rm --rm runs/rm_rlp --out runs/ppo_rlp
python probe_mdl.py --out runs/mdl
