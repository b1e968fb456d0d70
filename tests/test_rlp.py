"""Reward Learning on Policy: UML's pieces and SPG (nanorl/rlp.py), the win-rate annotator, and rlp.py."""

import json
import random

import pytest
import torch

from conftest import run_script
from nanorl import evals, rlp
from nanorl.reward import ScalarModel
from nanorl.engine import pack
from nanorl.gpt import GPTConfig


def test_js_bound_is_higher_for_dependent_views():
    """A critic trained on each pairing, then the bound measured on fresh samples."""
    torch.manual_seed(0)

    def trained_bound(make_z2):
        heads = rlp.MultiViewHeads(n_embd=8, z_dim=4, hidden=32)
        optimizer = torch.optim.Adam(heads.critic.parameters(), lr=1e-2)

        def bound(z1):
            z2 = make_z2(z1)
            return rlp.js_mutual_information(heads.critic_scores(z1, z2), heads.critic_scores(z1, z2.roll(1, 0)))
        for _ in range(200):
            (-bound(torch.randn(256, 4))).backward()
            optimizer.step(), optimizer.zero_grad()
        with torch.no_grad():
            return bound(torch.randn(4096, 4)).item()
    dependent = trained_bound(lambda z1: z1 + 0.1 * torch.randn_like(z1))
    independent = trained_bound(lambda z1: torch.randn_like(z1))
    # the bound lies in [-2 log 2, 0]; -2 log 2 = -1.386 when joint and shuffled pairs look alike
    assert dependent > -0.5 and independent < -1.3


def test_symmetric_kl_is_zero_for_identical_gaussians_and_known_otherwise():
    mu, std = torch.randn(3, 5), torch.rand(3, 5) + 0.5
    assert torch.allclose(rlp.symmetric_kl(mu, std, mu, std), torch.zeros(3), atol=1e-6)
    one = torch.ones(1, 1)
    # N(0, 1) vs N(1, 1): KL = 1/2 each way
    assert rlp.symmetric_kl(0 * one, one, one, one).item() == pytest.approx(0.5)
    assert rlp.gaussian_kl(0 * one, one, 0 * one, 2 * one).item() == pytest.approx(
        torch.log(torch.tensor(2.0)).item() + 1 / 8 - 0.5)


def test_kl_beta_anneals_from_1e3_to_1():
    assert rlp.kl_beta(0, 10) == pytest.approx(1e-3) and rlp.kl_beta(9, 10) == pytest.approx(1.0)
    assert rlp.kl_beta(3, 7) == pytest.approx(10 ** -1.5)


def test_uml_loss_has_gradients_into_heads_and_stats():
    torch.manual_seed(0)
    heads = rlp.MultiViewHeads(n_embd=8, z_dim=4)
    h1, h2 = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    loss, stats = rlp.uml_loss(heads, h1, h2, beta=0.5)
    loss.backward()
    assert h1.grad.abs().sum() > 0 and set(stats) == {"mi_js", "skl", "beta"}


def test_last_hidden_reads_the_last_real_token():
    torch.manual_seed(0)
    model = ScalarModel(GPTConfig(vocab_size=32, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    gen = pack([[1, 5], [1, 6, 7, 8]], [[9, 10, 2], [11]], eos_id=2, pad_id=0)
    hidden = rlp.last_hidden(model, gen)
    head_scores = model.head(hidden).squeeze(-1)
    from nanorl.reward import score
    assert torch.allclose(head_scores, score(model, gen), atol=1e-5)


def test_spg_clusters_confidence_and_gamma():
    answers = [5, 7, 5, None, 5, 3]
    assert rlp.answer_clusters(answers) == {5: [0, 2, 4], 7: [1], 3: [5]}
    assert rlp.largest_cluster(answers) == ([0, 2, 4], 0.5)
    assert rlp.largest_cluster([5, 7, 7, 5]) == ([], 0.0)  # a tie: no majority
    assert rlp.largest_cluster([None, None]) == ([], 0.0)
    scores = [0.1, 9.0, 0.7, 5.0, 0.3, 1.0]
    rng = random.Random(0)
    assert rlp.synthetic_pair(answers, scores, gamma=0.6, rng=rng) is None  # confidence 0.5 < 0.6
    for _ in range(20):
        chosen, rejected = rlp.synthetic_pair(answers, scores, gamma=0.5, rng=rng)
        assert chosen == 2  # the largest cluster's best-scored member, whatever scores outside it
        assert rejected in (1, 3, 5)
    assert rlp.synthetic_pair([4, 4, 4], [0, 1, 2], gamma=0.0, rng=rng) is None  # nothing outside the cluster
    assert rlp.confidence_histogram([0.2, 0.5, 1.0]) == {"0.0": 1.0, "0.3": 2 / 3, "0.5": 2 / 3, "0.7": 1 / 3}


def test_judge_win_probability():
    a, b = torch.tensor([1.0, 0.5, 1.05]), torch.tensor([0.0, 0.5, 1.0])
    assert evals.judge_win_probability(a, b, 0.0).tolist() == [1.0, 0.5, 1.0]
    noisy = evals.judge_win_probability(a, b, 0.1)
    assert noisy[0] == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item()) and noisy[1] == 0.5
    assert noisy[2] == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=1e-5)


def test_win_rate_of_a_policy_against_itself_is_one_half(pretrained_run):
    from nanorl import rundir, tasks
    policy, tokenizer, _ = rundir.load_policy(str(pretrained_run))
    problems = tasks.problem_set("test", 24, seed=0)
    kwargs = dict(temperature=1.0, max_new_tokens=24, quality_coef=0.1, judge_temperature=0.1)
    same = evals.win_rate(policy, policy, tokenizer, problems, seed=3, **kwargs)
    assert same["win_rate"] == 0.5 and same["win_rate_stderr"] == 0.0  # same seed, same draws
    # independent draws of the same policy: 0.5 within its stderr (x3)
    mine = evals.sampled_gold(policy, tokenizer, problems, seed=3, temperature=1.0, max_new_tokens=24, quality_coef=0.1)
    other = evals.sampled_gold(policy, tokenizer, problems, seed=4, temperature=1.0, max_new_tokens=24, quality_coef=0.1)
    wins = evals.judge_win_probability(mine, other, 0.1)
    assert abs(wins.mean().item() - 0.5) <= 3 * wins.std().item() / len(wins) ** 0.5 + 1e-9


@pytest.fixture(scope="module")
def rlp_inputs(tmp_path_factory, pretrained_run):
    """A reward model and a PPO policy trained against it, from the test pretraining run."""
    root = tmp_path_factory.mktemp("rlp")
    pre, rm, ppo = str(pretrained_run), str(root / "rm"), str(root / "ppo")
    run_script("train_rm.py", "--preset", "test", "--init", pre, "--out", rm)
    run_script("train_ppo.py", "--preset", "test", "--algo", "ppo", "--init", pre, "--reward", "rm", "--rm", rm,
               "--out", ppo)
    return pre, rm, ppo


def test_rlp_writes_a_reward_model_that_train_ppo_accepts(rlp_inputs, tmp_path):
    pre, rm, ppo = rlp_inputs
    out = tmp_path / "rm_rlp"
    run_script("rlp.py", "--preset", "test", "--init", pre, "--rm", rm, "--policy", ppo, "--out", str(out),
               "--gamma", "0")
    result = json.loads((out / "eval.json").read_text())
    assert result["method"] == "both"
    for name in ("pair_accuracy_init_policy", "pair_accuracy_rl_policy"):
        assert set(result[name]) == {"before", "after"}
        assert all(0.0 <= v <= 1.0 for v in result[name].values())
    assert result["n_synthetic_pairs"] <= 6 and "synthetic_pair_accuracy" in result
    assert result["calib_score_std"] == pytest.approx(1.0, abs=1e-3)
    assert json.loads((out / "config.json").read_text())["kind"] == "rm"
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses and all("l_m" in r and "mi_js" in r for r in losses)
    # the retrained RM drives PPO, whose eval.json judges both sides against the initial policy
    run_script("train_ppo.py", "--preset", "test", "--algo", "ppo", "--init", pre, "--reward", "rm", "--rm",
               str(out), "--out", str(tmp_path / "ppo2"))
    evaluation = json.loads((tmp_path / "ppo2" / "eval.json").read_text())
    for side in ("before", "after"):
        assert {"win_rate", "win_rate_stderr", "gold_reward"} <= set(evaluation[side])
    assert evaluation["before"]["win_rate"] == 0.5  # the initial policy against itself, same draws


def test_rlp_without_held_out_pairs_is_one_clear_error(rlp_inputs, tmp_path):
    """--quality-coef 0 and a policy that is never right: every sample of a prompt earns gold 0."""
    pre, rm, ppo = rlp_inputs
    proc = run_script("rlp.py", "--preset", "test", "--init", pre, "--rm", rm, "--policy", ppo, "--out",
                      str(tmp_path / "out"), "--quality-coef", "0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no held-out pairs from the init_policy")
