"""The Bradley-Terry reward model: loss, last-token scoring, init, annotators, prefs files
(train_rm.py end to end: tests/test_train_rm.py)."""

import json
import math
import random
import re

import pytest
import torch

from nanorl import rundir, runtime
from nanorl.data import DataError
from nanorl.engine import Generation
from nanorl.gpt import GPT, GPTConfig
from nanorl.tasks import problem_set
from nanorl.reward import (Pair, ScalarModel, bradley_terry_loss, gold_reward, pairs_to_generation, annotator_pairs, read_preferences, score)
from nanorl.rl import last_index
from nanorl.tokenizer import Tokenizer

SMALL = GPTConfig(vocab_size=32, block_size=64, n_layer=2, n_head=2, n_embd=16)


def small_model(seed=0) -> ScalarModel:
    torch.manual_seed(seed)
    return ScalarModel(SMALL).eval()


# ----------------------------------------------------------------------------- loss

def test_bt_loss_is_log2_for_equal_rewards():
    r = torch.tensor([0.3, -1.0, 2.0])
    loss, stats = bradley_terry_loss(r, r.clone())
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats == {"accuracy": 0.0, "margin": 0.0}


def test_bt_gradient_pushes_chosen_up_and_rejected_down():
    r_c = torch.tensor([0.5, -0.2], requires_grad=True)
    r_r = torch.tensor([0.1, 0.4], requires_grad=True)
    bradley_terry_loss(r_c, r_r)[0].backward()
    assert (r_c.grad < 0).all() and (r_r.grad > 0).all()  # a descent step raises r_c, lowers r_r
    assert torch.allclose(r_c.grad, -r_r.grad)


def test_bt_margin_centring_and_stats_by_hand():
    r_c, r_r = torch.tensor([2.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 0.0])
    loss, stats = bradley_terry_loss(r_c, r_r, margin=0.5, center_coef=0.1)
    diffs, sums = [1.0, -1.0, 3.0], [3.0, 1.0, 3.0]
    nll = sum(math.log(1 + math.exp(-(d - 0.5))) for d in diffs) / 3
    expected = nll + 0.1 * sum(s * s for s in sums) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert stats["accuracy"] == pytest.approx(2 / 3)
    assert stats["margin"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- model

def test_last_index_picks_the_last_true_column():
    valid = torch.tensor([[False, True, True, True, False, False], [False, False, True, True, True, True]])
    assert last_index(valid).tolist() == [3, 5]


def padded(prompt, response, left, right, pad=2):
    """A one-row Generation with `left` pads before the prompt and `right` pads after the response."""
    return Generation(torch.tensor([[pad] * left + prompt]), torch.tensor([[False] * left + [True] * len(prompt)]),
                      torch.tensor([response + [pad] * right]), torch.zeros(1, len(response) + right),
                      torch.tensor([[True] * len(response) + [False] * right]), torch.tensor([True]))


def test_score_ignores_left_and_right_padding():
    model = small_model()
    prompt, response = [0, 5, 9, 11, 4], [7, 8, 3, 1]
    with torch.no_grad():
        scores = [score(model, padded(prompt, response, left, right)).item()
                  for left, right in [(0, 0), (3, 0), (0, 5), (7, 2)]]
        # a batch whose rows have different lengths gives each row its own score
        batch = pairs_to_generation([Pair(prompt, response, [6, 1]), Pair([0, 3], [9, 9, 9, 9, 9, 1], [4, 1])], eos_id=1, pad_id=2)
        batched = score(model, batch)
    assert max(scores) - min(scores) < 1e-5
    assert batched[0].item() == pytest.approx(scores[0], abs=1e-5)
    assert batched[3].item() == pytest.approx(score(model, padded([0, 3], [4, 1], 0, 0)).item(), abs=1e-5)


def test_head_init_std_is_one_over_sqrt_d_plus_1():
    torch.manual_seed(0)
    d = 4096
    head = ScalarModel(GPTConfig(vocab_size=16, block_size=8, n_layer=0, n_head=1, n_embd=d)).head
    assert head.weight.std().item() == pytest.approx(1 / math.sqrt(d + 1), rel=0.08)  # SE ~1.1%
    assert abs(head.weight.mean().item()) < 4 / math.sqrt(d + 1) / math.sqrt(d)
    assert head.bias.item() == 0.0


def test_from_gpt_copies_weights_without_sharing_storage():
    torch.manual_seed(0)
    gpt = GPT(SMALL)
    model = ScalarModel.from_gpt(gpt)
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for k, v in gpt.state_dict().items():
        assert torch.equal(v, before[k]), k  # the source GPT is untouched
    with torch.no_grad():
        gpt.wte.weight.zero_()
    assert model.backbone.wte.weight.abs().min() > 0


def test_save_and_load_round_trip_gives_identical_scores(tmp_path, pretrained_run):
    _, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = ScalarModel(config)
    with torch.no_grad():
        model.head.bias.fill_(0.25)
    (tmp_path / "rm").mkdir()
    rundir.save_model(str(tmp_path / "rm"), model, tokenizer, {"model": config.to_dict()}, kind="rm")
    loaded, tok2, cfg = rundir.load_reward_model(str(tmp_path / "rm"))
    batch = pairs_to_generation([Pair([0, 40, 41], [50, 51, 1], [60, 1]), Pair([0, 42], [43, 1], [44, 45, 46])], eos_id=1, pad_id=2)
    with torch.no_grad():
        assert torch.equal(score(model.eval(), batch), score(loaded, batch))
    assert cfg["kind"] == "rm" and cfg["format"] == rundir.FORMAT and tok2.vocab_size == tokenizer.vocab_size
    with pytest.raises(runtime.RunError, match=r"is a pretraining run \(kind pretrain\); --rm needs a reward-model run \(kind rm\)"):
        rundir.load_reward_model(str(pretrained_run))
    with pytest.raises(runtime.RunError, match="no such run directory"):
        rundir.load_reward_model(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- annotators

def test_gold_reward_prefers_correct_then_short():
    problem = problem_set("test", 1, seed=0)[0]
    right, wrong = f"The answer is \\boxed{{{problem.answer}}}.", f"The answer is \\boxed{{{problem.answer + 1}}}."
    assert gold_reward(right, problem, 100, True, 128, 0.1) > gold_reward(wrong, problem, 10, True, 128, 0.1)
    assert gold_reward(right, problem, 10, True, 128, 0.1) > gold_reward(right, problem, 100, True, 128, 0.1)
    assert gold_reward(right, problem, 128, False, 128, 0.1) == 1.0  # truncated: quality 0


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_label_noise_flips_the_requested_fraction(noise):
    rng = random.Random(0)
    gold = [g for _ in range(20000) for g in (rng.random(), rng.random())]
    pairs = annotator_pairs(gold, group_size=2, max_pairs=1, label_noise=noise, rng=random.Random(1))
    assert len(pairs) == 20000
    flipped = sum(gold[c] < gold[r] for c, r in pairs) / len(pairs)
    if noise == 0:
        assert flipped == 0
    else:
        assert flipped == pytest.approx(noise, abs=0.015)  # 4+ standard errors
    again = annotator_pairs(gold, group_size=2, max_pairs=1, label_noise=noise, rng=random.Random(1))
    assert again == pairs  # seeded


def test_pairs_stay_within_prompts_largest_gap_first_and_capped():
    gold = [1.05, 1.05, 0.02, 0.01,   0.5, 0.5, 0.5, 0.5]  # two prompts of 4 samples
    pairs = annotator_pairs(gold, group_size=4, max_pairs=3, label_noise=0.0, rng=random.Random(0))
    assert len(pairs) == 3  # the second prompt's samples are all equal: no pairs
    assert all(c < 4 and r < 4 and gold[c] > gold[r] for c, r in pairs)
    assert all(gold[c] - gold[r] > 1.0 for c, r in pairs)  # correctness pairs before the quality-only one


# ----------------------------------------------------------------------------- preference files

def test_read_preferences_and_malformed_lines(tmp_path, pretrained_run):
    tokenizer = Tokenizer.load(str(pretrained_run / "tokenizer.json"))
    path = tmp_path / "prefs.jsonl"
    good = json.dumps({"prompt": "Q: 2 + 2?\n\n", "chosen": "\\boxed{4}", "rejected": "\\boxed{5}"})
    path.write_text(good + "\n\n" + good + "\n")
    pairs = read_preferences(str(path), tokenizer, block_size=256)
    assert len(pairs) == 2
    assert pairs[0].prompt[0] == tokenizer.bos_id and pairs[0].chosen[-1] == tokenizer.eos_id
    assert tokenizer.decode(pairs[0].rejected[:-1]) == "\\boxed{5}"
    for bad, why in [('{"prompt": "x", "chosen": "y"', "invalid JSON"),
                     ('{"prompt": "x", "chosen": "y"}', 'field "rejected"'),
                     ('["x", "y", "z"]', "JSON object"),
                     ('{"prompt": "x", "chosen": 3, "rejected": "z"}', 'field "chosen"')]:
        path.write_text(good + "\n" + good + "\n" + bad + "\n")
        with pytest.raises(DataError, match=re.escape(f"{path}, line 3: ") + f".*{why}"):
            read_preferences(str(path), tokenizer, block_size=256)
    path.write_text(json.dumps({"prompt": "x" * 300, "chosen": "y", "rejected": "z"}) + "\n")
    with pytest.raises(DataError, match="line 1: .*block_size"):
        read_preferences(str(path), tokenizer, block_size=64)
