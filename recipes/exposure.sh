#!/usr/bin/env bash
# Exposure bias (teacher-forced vs free-running error, recovery, diversity) of SFT and GRPO: docs/exposure/README.md.
# One pretrained model (seed 1337); SFT on the tinygsm reference solutions and GRPO, 60 steps each, seeds 1-3.
# 2-core CPU: pretraining 5.9 min, a GRPO run 281 s of training (evaluation extra), the measurement 66 s; SFT not timed.
set -euo pipefail
# the base model
python train_pretrain.py --out runs/exposure/pretrain
# GRPO from the base model: the Echo Chamber runs' command (docs/echo), seeds 1-3
python train_ppo.py --init runs/exposure/pretrain --algo grpo --seed 1 --out runs/exposure/grpo_s1
python train_ppo.py --init runs/exposure/pretrain --algo grpo --seed 2 --out runs/exposure/grpo_s2
python train_ppo.py --init runs/exposure/pretrain --algo grpo --seed 3 --out runs/exposure/grpo_s3
# SFT on the world's reference solutions in the tinygsm format, the same 60 steps x 16 prompts, seeds 1-3
python train_ppo.py --init runs/exposure/pretrain --algo sft --sft-format tinygsm --seed 1 --eval-every 60 --out runs/exposure/sft_s1
python train_ppo.py --init runs/exposure/pretrain --algo sft --sft-format tinygsm --seed 2 --eval-every 60 --out runs/exposure/sft_s2
python train_ppo.py --init runs/exposure/pretrain --algo sft --sft-format tinygsm --seed 3 --eval-every 60 --out runs/exposure/sft_s3
# the measurement: 50 held-out problems per difficulty, references in tinygsm
python -m nanorl.exposure --run base=runs/exposure/pretrain --run sft=runs/exposure/sft_s1,runs/exposure/sft_s2,runs/exposure/sft_s3 --run grpo=runs/exposure/grpo_s1,runs/exposure/grpo_s2,runs/exposure/grpo_s3 --format tinygsm --out docs/exposure
