#!/usr/bin/env bash
# Pretraining on the open math mixture, the tiny default (seed 1337): docs/pretrain/README.md.
# 2-core CPU: 5.9 min, tokenizer, corpus and evaluation included.
set -euo pipefail
# the tiny preset on the default mixture tinygsm : omi1 : omi2 : finemath = 1 : 1 : 1 : 1
python train_pretrain.py --out runs/pretraining/tiny
