#!/usr/bin/env bash
# Reward-model over-optimisation (Gao, Schulman & Hilton 2022) at laptop scale: docs/rm/README.md.
# One pretrained model (the main job's, seed 1337); per seed, the main job's reward model and PPO against
# it with the KL coefficient beta in {0.1, 0.02, 0}, 40 steps each. About 70 minutes on a 2-core CPU.
set -euo pipefail
python train_pretrain.py --out runs/pretrain
python train_rm.py --seed 1 --init runs/pretrain --out runs/oo/s1/rm --label-noise 0.25
python train_ppo.py --seed 1 --init runs/pretrain --reward rm --rm runs/oo/s1/rm --kl-coef 0.1 --max-steps 40 --eval-every 10 --out runs/oo/s1/ppo_b0.1
python train_ppo.py --seed 1 --init runs/pretrain --reward rm --rm runs/oo/s1/rm --kl-coef 0.02 --max-steps 40 --eval-every 10 --out runs/oo/s1/ppo_b0.02
python train_ppo.py --seed 1 --init runs/pretrain --reward rm --rm runs/oo/s1/rm --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/oo/s1/ppo_b0
python train_rm.py --seed 2 --init runs/pretrain --out runs/oo/s2/rm --label-noise 0.25
python train_ppo.py --seed 2 --init runs/pretrain --reward rm --rm runs/oo/s2/rm --kl-coef 0.1 --max-steps 40 --eval-every 10 --out runs/oo/s2/ppo_b0.1
python train_ppo.py --seed 2 --init runs/pretrain --reward rm --rm runs/oo/s2/rm --kl-coef 0.02 --max-steps 40 --eval-every 10 --out runs/oo/s2/ppo_b0.02
python train_ppo.py --seed 2 --init runs/pretrain --reward rm --rm runs/oo/s2/rm --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/oo/s2/ppo_b0
python train_rm.py --seed 3 --init runs/pretrain --out runs/oo/s3/rm --label-noise 0.25
python train_ppo.py --seed 3 --init runs/pretrain --reward rm --rm runs/oo/s3/rm --kl-coef 0.1 --max-steps 40 --eval-every 10 --out runs/oo/s3/ppo_b0.1
python train_ppo.py --seed 3 --init runs/pretrain --reward rm --rm runs/oo/s3/rm --kl-coef 0.02 --max-steps 40 --eval-every 10 --out runs/oo/s3/ppo_b0.02
python train_ppo.py --seed 3 --init runs/pretrain --reward rm --rm runs/oo/s3/rm --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/oo/s3/ppo_b0
python -m nanorl.compare runs/oo/s1/ppo_b0.1 runs/oo/s2/ppo_b0.1 runs/oo/s3/ppo_b0.1 runs/oo/s1/ppo_b0.02 runs/oo/s2/ppo_b0.02 runs/oo/s3/ppo_b0.02 runs/oo/s1/ppo_b0 runs/oo/s2/ppo_b0 runs/oo/s3/ppo_b0 --out docs/rm/overopt
