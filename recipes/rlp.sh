#!/usr/bin/env bash
# Reward Learning on Policy (RLP-UML and RLP-SPG) against plain PPO, 2 PPO seeds, one RM: docs/rlp/README.md.
# 2-core CPU: pretraining 5.9 min, the RM 1.5 min, rlp.py 1.3 min a run; each PPO run (beta 0.02, 60 steps)
# 503.7-543.3 s of training on average (evaluation extra). Nine PPO runs, five rlp.py runs.
set -euo pipefail
# the SFT policy (the pretrained model) and the RM, with AlpacaFarm-style noisy labels
python train_pretrain.py --out runs/rlp/pretrain
python train_rm.py --init runs/rlp/pretrain --out runs/rlp/rm --label-noise 0.25
# PPO against the original RM, seeds 1 and 2
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm --seed 1 --out runs/rlp/ppo_rm_s1
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm --seed 2 --out runs/rlp/ppo_rm_s2
# RLP on the PPO policy of seed 1: UML and SPG (gamma 0.5)
python rlp.py --init runs/rlp/pretrain --rm runs/rlp/rm --policy runs/rlp/ppo_rm_s1 --method uml --out runs/rlp/rm_uml
python rlp.py --init runs/rlp/pretrain --rm runs/rlp/rm --policy runs/rlp/ppo_rm_s1 --method spg --out runs/rlp/rm_spg
# PPO from the SFT policy against each retrained RM, seeds 1 and 2
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_uml --seed 1 --out runs/rlp/ppo_uml_s1
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_uml --seed 2 --out runs/rlp/ppo_uml_s2
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_spg --seed 1 --out runs/rlp/ppo_spg_s1
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_spg --seed 2 --out runs/rlp/ppo_spg_s2
# the SPG gamma sweep (gamma 0.5 is rm_spg above), and PPO against each RM, seed 1
python rlp.py --init runs/rlp/pretrain --rm runs/rlp/rm --policy runs/rlp/ppo_rm_s1 --method spg --gamma 0 --out runs/rlp/rm_spg_g0
python rlp.py --init runs/rlp/pretrain --rm runs/rlp/rm --policy runs/rlp/ppo_rm_s1 --method spg --gamma 0.3 --out runs/rlp/rm_spg_g0.3
python rlp.py --init runs/rlp/pretrain --rm runs/rlp/rm --policy runs/rlp/ppo_rm_s1 --method spg --gamma 0.7 --out runs/rlp/rm_spg_g0.7
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_spg_g0 --seed 1 --out runs/rlp/ppo_spg_g0_s1
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_spg_g0.3 --seed 1 --out runs/rlp/ppo_spg_g0.3_s1
python train_ppo.py --init runs/rlp/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/rlp/rm_spg_g0.7 --seed 1 --out runs/rlp/ppo_spg_g0.7_s1
# mean ± std over seeds 1 and 2: docs/rlp/summary.md, summary.json and the format-share plots
python -m nanorl.compare runs/rlp/ppo_rm_s1 runs/rlp/ppo_uml_s1 runs/rlp/ppo_spg_s1 runs/rlp/ppo_rm_s2 runs/rlp/ppo_uml_s2 runs/rlp/ppo_spg_s2 --out docs/rlp
