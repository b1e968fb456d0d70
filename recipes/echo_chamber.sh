#!/usr/bin/env bash
# The Echo Chamber over seeds: docs/echo/README.md. One pretrained model (seed 1337), then GRPO, PPO and EI at
# beta 0 and GRPO at beta 0.1, 60 steps each, RL seeds 1-3, and the table. 2-core CPU: pretraining 5.9 min; then
# training time per run, seed 1 alone on the machine (evaluation extra): GRPO 281.3 s, PPO 1569.3 s, EI 192.8 s.
set -euo pipefail
# the pretrained model every run starts from
python train_pretrain.py --out runs/echo_chamber/pretrain
# RL seed 1: GRPO, PPO and EI with the verifier reward and beta 0, then GRPO with beta 0.1
python train_ppo.py --init runs/echo_chamber/pretrain --algo grpo --seed 1 --out runs/echo_chamber/grpo_s1
python train_ppo.py --init runs/echo_chamber/pretrain --algo ppo --seed 1 --out runs/echo_chamber/ppo_s1
python train_ppo.py --init runs/echo_chamber/pretrain --algo ei --seed 1 --out runs/echo_chamber/ei_s1
python train_ppo.py --init runs/echo_chamber/pretrain --algo grpo --kl-coef 0.1 --seed 1 --out runs/echo_chamber/grpo_kl_s1
# RL seed 2: GRPO, PPO and EI with the verifier reward and beta 0, then GRPO with beta 0.1
python train_ppo.py --init runs/echo_chamber/pretrain --algo grpo --seed 2 --out runs/echo_chamber/grpo_s2
python train_ppo.py --init runs/echo_chamber/pretrain --algo ppo --seed 2 --out runs/echo_chamber/ppo_s2
python train_ppo.py --init runs/echo_chamber/pretrain --algo ei --seed 2 --out runs/echo_chamber/ei_s2
python train_ppo.py --init runs/echo_chamber/pretrain --algo grpo --kl-coef 0.1 --seed 2 --out runs/echo_chamber/grpo_kl_s2
# RL seed 3: GRPO, PPO and EI with the verifier reward and beta 0, then GRPO with beta 0.1
python train_ppo.py --init runs/echo_chamber/pretrain --algo grpo --seed 3 --out runs/echo_chamber/grpo_s3
python train_ppo.py --init runs/echo_chamber/pretrain --algo ppo --seed 3 --out runs/echo_chamber/ppo_s3
python train_ppo.py --init runs/echo_chamber/pretrain --algo ei --seed 3 --out runs/echo_chamber/ei_s3
python train_ppo.py --init runs/echo_chamber/pretrain --algo grpo --kl-coef 0.1 --seed 3 --out runs/echo_chamber/grpo_kl_s3
# mean ± std over seeds: docs/echo/summary.md, summary.json and the format-share plots
python -m nanorl.compare runs/echo_chamber/grpo_s1 runs/echo_chamber/ppo_s1 runs/echo_chamber/ei_s1 runs/echo_chamber/grpo_kl_s1 runs/echo_chamber/grpo_s2 runs/echo_chamber/ppo_s2 runs/echo_chamber/ei_s2 runs/echo_chamber/grpo_kl_s2 runs/echo_chamber/grpo_s3 runs/echo_chamber/ppo_s3 runs/echo_chamber/ei_s3 runs/echo_chamber/grpo_kl_s3 --out docs/echo
