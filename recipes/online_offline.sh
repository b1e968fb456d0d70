#!/usr/bin/env bash
# Online vs offline fine-tuning from the same preferences ("All Roads Lead to Likelihood"): docs/online_offline/README.md.
# One pretrained model and one reward model; offline DPO (a sweep, then seeds 1-3), online DPO and PPO (seeds 1-3), two
# manipulations and the implicit-RM comparison. 2-core CPU: pretraining 5.9 min, the RM 1.5 min; then training time per run
# (evaluation extra): offline DPO 27.8 s, online DPO 39.3 s (20 steps) or 125.2 s (60 steps), PPO 508.3 s.
set -euo pipefail
# the pretrained model and the reward model whose training pairs (prefs.jsonl) every arm learns from
python train_pretrain.py --out runs/online_offline/pretrain
python train_rm.py --init runs/online_offline/pretrain --out runs/online_offline/rm --label-noise 0.25
# offline: the DPO sweep over beta and the learning rate (seed 1)
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.1 --lr 1e-5 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.1_lr1e-5_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.1 --lr 3e-5 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.1_lr3e-5_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.1 --lr 1e-4 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.1_lr1e-4_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.1 --lr 3e-4 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.1_lr3e-4_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.3 --lr 1e-5 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.3_lr1e-5_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.3 --lr 3e-5 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.3_lr3e-5_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.3 --lr 1e-4 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.3_lr1e-4_s1
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.3 --lr 3e-4 --seed 1 --eval-every 60 --out runs/online_offline/dpo_b0.3_lr3e-4_s1
# offline: the best setting (beta 0.3, lr 3e-5) on seeds 2 and 3
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.3 --lr 3e-5 --seed 2 --eval-every 60 --out runs/online_offline/dpo_b0.3_lr3e-5_s2
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm/prefs.jsonl --dpo-beta 0.3 --lr 3e-5 --seed 3 --eval-every 60 --out runs/online_offline/dpo_b0.3_lr3e-5_s3
# online DPO against the RM (8 samples per prompt, RM best vs worst): 60 steps, seeds 1-3
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --seed 1 --eval-every 60 --out runs/online_offline/odpo_s1
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --seed 2 --eval-every 60 --out runs/online_offline/odpo_s2
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --seed 3 --eval-every 60 --out runs/online_offline/odpo_s3
# online DPO stopped at 20 steps, seeds 1-3
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --rm runs/online_offline/rm --max-steps 20 --seed 1 --eval-every 20 --out runs/online_offline/odpo_20steps_s1
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --rm runs/online_offline/rm --max-steps 20 --seed 2 --eval-every 20 --out runs/online_offline/odpo_20steps_s2
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --rm runs/online_offline/rm --max-steps 20 --seed 3 --eval-every 20 --out runs/online_offline/odpo_20steps_s3
# online DPO with a larger beta, 60 steps (seed 1)
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --dpo-beta 0.3 --seed 1 --eval-every 60 --out runs/online_offline/odpo_b0.3_s1
# PPO against the RM (beta 0.02, 60 steps), seeds 1-3
python train_ppo.py --init runs/online_offline/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --seed 1 --out runs/online_offline/ppo_rm_s1
python train_ppo.py --init runs/online_offline/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --seed 2 --out runs/online_offline/ppo_rm_s2
python train_ppo.py --init runs/online_offline/pretrain --algo ppo --reward rm --kl-coef 0.02 --max-steps 60 --rm runs/online_offline/rm --seed 3 --out runs/online_offline/ppo_rm_s3
# the tables and plots: the four arms over seeds, and the sweep
python -m nanorl.compare "offline DPO=runs/online_offline/dpo_b0.3_lr3e-5_s1,runs/online_offline/dpo_b0.3_lr3e-5_s2,runs/online_offline/dpo_b0.3_lr3e-5_s3" "online DPO, 20 steps=runs/online_offline/odpo_20steps_s1,runs/online_offline/odpo_20steps_s2,runs/online_offline/odpo_20steps_s3" "online DPO, 60 steps=runs/online_offline/odpo_s1,runs/online_offline/odpo_s2,runs/online_offline/odpo_s3" "PPO=runs/online_offline/ppo_rm_s1,runs/online_offline/ppo_rm_s2,runs/online_offline/ppo_rm_s3" --out docs/online_offline/main
python -m nanorl.compare runs/online_offline/dpo_b0.1_lr1e-4_s1 runs/online_offline/dpo_b0.1_lr1e-5_s1 runs/online_offline/dpo_b0.1_lr3e-4_s1 runs/online_offline/dpo_b0.1_lr3e-5_s1 runs/online_offline/dpo_b0.3_lr1e-4_s1 runs/online_offline/dpo_b0.3_lr1e-5_s1 runs/online_offline/dpo_b0.3_lr3e-4_s1 runs/online_offline/dpo_b0.3_lr3e-5_s1 --out docs/online_offline/sweep
# manipulation 1, the horizon: 1-step problems only, and 4-step problems only (seed 1, the tuned settings)
python train_rm.py --init runs/online_offline/pretrain --out runs/online_offline/rm_d1 --min-difficulty 1 --max-difficulty 1 --label-noise 0.25
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm_d1/prefs.jsonl --dpo-beta 0.3 --lr 3e-5 --min-difficulty 1 --max-difficulty 1 --eval-max-difficulty 1 --seed 1 --eval-every 60 --out runs/online_offline/dpo_tuned_d1_s1
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --rm runs/online_offline/rm_d1 --max-steps 20 --min-difficulty 1 --max-difficulty 1 --eval-max-difficulty 1 --seed 1 --eval-every 20 --out runs/online_offline/odpo_20steps_d1_s1
python train_rm.py --init runs/online_offline/pretrain --out runs/online_offline/rm_d4 --min-difficulty 4 --max-difficulty 4 --label-noise 0.25
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm_d4/prefs.jsonl --dpo-beta 0.3 --lr 3e-5 --min-difficulty 4 --max-difficulty 4 --eval-max-difficulty 4 --seed 1 --eval-every 60 --out runs/online_offline/dpo_tuned_d4_s1
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --rm runs/online_offline/rm_d4 --max-steps 20 --min-difficulty 4 --max-difficulty 4 --eval-max-difficulty 4 --seed 1 --eval-every 20 --out runs/online_offline/odpo_20steps_d4_s1
# manipulation 2, a reward as hard to learn as the policy: the "target" gold reward (seed 1)
python train_rm.py --init runs/online_offline/pretrain --out runs/online_offline/rm_target --gold target --label-noise 0.25
python train_ppo.py --init runs/online_offline/pretrain --algo dpo --prefs runs/online_offline/rm_target/prefs.jsonl --dpo-beta 0.3 --lr 3e-5 --gold target --seed 1 --eval-every 60 --out runs/online_offline/dpo_tuned_target_s1
python train_ppo.py --init runs/online_offline/pretrain --algo online_dpo --reward rm --kl-coef 0.02 --rm runs/online_offline/rm_target --gold target --max-steps 20 --seed 1 --eval-every 20 --out runs/online_offline/odpo_20steps_target_s1
python -m nanorl.compare "1-step offline=runs/online_offline/dpo_tuned_d1_s1" "1-step online=runs/online_offline/odpo_20steps_d1_s1" "1-4-step offline=runs/online_offline/dpo_b0.3_lr3e-5_s1" "1-4-step online=runs/online_offline/odpo_20steps_s1" "4-step offline=runs/online_offline/dpo_tuned_d4_s1" "4-step online=runs/online_offline/odpo_20steps_d4_s1" "target offline=runs/online_offline/dpo_tuned_target_s1" "target online=runs/online_offline/odpo_20steps_target_s1" --out docs/online_offline/manipulations
# the global RM against the reward each DPO policy implies, in distribution and on the PPO policy's pairs (seed 1)
python -m nanorl.implicit_rm --rm runs/online_offline/rm --policy "offline DPO=runs/online_offline/dpo_b0.3_lr3e-5_s1,runs/online_offline/dpo_b0.3_lr3e-5_s2,runs/online_offline/dpo_b0.3_lr3e-5_s3" --policy "online DPO, 20 steps=runs/online_offline/odpo_20steps_s1,runs/online_offline/odpo_20steps_s2,runs/online_offline/odpo_20steps_s3" --policy "online DPO, 60 steps=runs/online_offline/odpo_s1,runs/online_offline/odpo_s2,runs/online_offline/odpo_s3" --shift runs/online_offline/ppo_rm_s1 --out docs/online_offline
