"""nanorl: minimal RL fine-tuning of small language models, from scratch."""
