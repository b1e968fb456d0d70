#!/usr/bin/env bash
# Reward-model over-optimisation (Gao, Schulman & Hilton 2022) at laptop scale: docs/rm/README.md.
# One pretrained model (the main job's, seed 1337); per seed, the main job's reward model and PPO against
# it with the KL coefficient beta in {0.1, 0.02, 0}, 40 steps each (about 70 minutes on a 2-core CPU);
# then the RLP stages of each seed (about 30 more), and one seed of two RM variants (about 25 more).
set -euo pipefail
python train_pretrain.py --out runs/overoptimisation/pretrain
python train_rm.py --seed 1 --init runs/overoptimisation/pretrain --out runs/overoptimisation/s1/rm --label-noise 0.25
python train_ppo.py --seed 1 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s1/rm --kl-coef 0.1 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s1/ppo_b0.1
python train_ppo.py --seed 1 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s1/rm --kl-coef 0.02 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s1/ppo_b0.02
python train_ppo.py --seed 1 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s1/rm --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s1/ppo_b0
python train_rm.py --seed 2 --init runs/overoptimisation/pretrain --out runs/overoptimisation/s2/rm --label-noise 0.25
python train_ppo.py --seed 2 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s2/rm --kl-coef 0.1 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s2/ppo_b0.1
python train_ppo.py --seed 2 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s2/rm --kl-coef 0.02 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s2/ppo_b0.02
python train_ppo.py --seed 2 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s2/rm --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s2/ppo_b0
python train_rm.py --seed 3 --init runs/overoptimisation/pretrain --out runs/overoptimisation/s3/rm --label-noise 0.25
python train_ppo.py --seed 3 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s3/rm --kl-coef 0.1 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s3/ppo_b0.1
python train_ppo.py --seed 3 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s3/rm --kl-coef 0.02 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s3/ppo_b0.02
python train_ppo.py --seed 3 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s3/rm --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s3/ppo_b0
# the main job's RLP stages for seeds 1-3: ppo_b0.1 is the default PPO run (beta 0.1, 40 steps; --eval-every
# changes no result), so each seed's pipeline is rm -> ppo_b0.1 -> rm_rlp -> ppo_rlp
python rlp.py --seed 1 --init runs/overoptimisation/pretrain --rm runs/overoptimisation/s1/rm --policy runs/overoptimisation/s1/ppo_b0.1 --out runs/overoptimisation/s1/rm_rlp
python train_ppo.py --seed 1 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s1/rm_rlp --out runs/overoptimisation/s1/ppo_rlp
python rlp.py --seed 2 --init runs/overoptimisation/pretrain --rm runs/overoptimisation/s2/rm --policy runs/overoptimisation/s2/ppo_b0.1 --out runs/overoptimisation/s2/rm_rlp
python train_ppo.py --seed 2 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s2/rm_rlp --out runs/overoptimisation/s2/ppo_rlp
python rlp.py --seed 3 --init runs/overoptimisation/pretrain --rm runs/overoptimisation/s3/rm --policy runs/overoptimisation/s3/ppo_b0.1 --out runs/overoptimisation/s3/rm_rlp
python train_ppo.py --seed 3 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s3/rm_rlp --out runs/overoptimisation/s3/ppo_rlp
# how the peak moves with the RM (seed 1, beta 0): the RLP-retrained RM, and an RM without label noise
python train_rm.py --seed 1 --init runs/overoptimisation/pretrain --out runs/overoptimisation/s1/rm_clean --label-noise 0
python train_ppo.py --seed 1 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s1/rm_clean --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s1/ppo_b0_clean
python train_ppo.py --seed 1 --init runs/overoptimisation/pretrain --reward rm --rm runs/overoptimisation/s1/rm_rlp --kl-coef 0 --max-steps 40 --eval-every 10 --out runs/overoptimisation/s1/ppo_b0_rlp
python -m nanorl.compare "PPO beta 0.1=runs/overoptimisation/s1/ppo_b0.1,runs/overoptimisation/s2/ppo_b0.1,runs/overoptimisation/s3/ppo_b0.1" "PPO beta 0.02=runs/overoptimisation/s1/ppo_b0.02,runs/overoptimisation/s2/ppo_b0.02,runs/overoptimisation/s3/ppo_b0.02" "PPO beta 0=runs/overoptimisation/s1/ppo_b0,runs/overoptimisation/s2/ppo_b0,runs/overoptimisation/s3/ppo_b0" --out docs/rm/overopt
python -m nanorl.compare "PPO, original RM=runs/overoptimisation/s1/ppo_b0.1,runs/overoptimisation/s2/ppo_b0.1,runs/overoptimisation/s3/ppo_b0.1" "PPO, RLP RM=runs/overoptimisation/s1/ppo_rlp,runs/overoptimisation/s2/ppo_rlp,runs/overoptimisation/s3/ppo_rlp" --out docs/rm/mainjob
python -m nanorl.compare "the main job's RM=runs/overoptimisation/s1/ppo_b0" "RLP-retrained RM=runs/overoptimisation/s1/ppo_b0_rlp" "RM without label noise=runs/overoptimisation/s1/ppo_b0_clean" --out docs/rm/variants
