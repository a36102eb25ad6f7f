"""In-context steering with ICRM's Beta head, at toy scale (CPU, well under a minute by default).

    python examples/icrm_steering.py            # full size: prints the tables, writes docs/icrm_steering.png
    python examples/icrm_steering.py --small    # the size the test runs

What it builds (all synthetic, all small: nothing is downloaded):

* Responses have two objectives o = (o1, o2) on a concave trade-off (o1 = r cos t, o2 = r sin t,
  r in [0.6, 1]) and the model sees only features x = [o, noise] mixed by a fixed random
  orthogonal matrix, so it must learn which directions carry the objectives.
* Users differ in their trade-off weight w in [0, 1] (utility u = w o1 + (1 - w) o2). A user's
  preference between a and b is Bernoulli(sigmoid(8 (u(a) - u(b)))). The weight is never given to
  the model: it is revealed only by k demonstrations of that user's preferences on other pairs.

Part 1, in-context: an MLP reward model with ICRM's Beta head
(:class:`icrm_kernels.nn.BetaRewardHead`, pair scoring ``score_pair``) reads the query pair and
a permutation-invariant summary of the k demonstrations (mean of (2y - 1)(x_chosen - x_rejected)
and k/16), trained with the fused ELBO (:func:`icrm_kernels.beta_elbo_loss_from_logits`) on
random users and k = 0..16. Reported: preference accuracy on held-out users (the same query
pairs at every k) against the user's noiseless preference, for k = 0..16. At k = 0 the model can
only follow the average user; accuracy rises as the demonstrations reveal w.

Part 2, test-time weights: a two-objective model (one Beta head per objective on a shared MLP,
each trained on that objective's pairwise labels) is steered with :func:`icrm_kernels.steer`
(posterior means weighted by [w, 1 - w], w on a grid of 11 values) to pick one response out of 32
candidates per prompt; a fixed-weight model (one Beta head trained on w = 0.5 users) picks by its
single reward. Reported: the mean :func:`icrm_kernels.hypervolume` of the picked points per
prompt (reference point: the candidates' minimum per objective), with the candidates' true
Pareto front as the ceiling. A fixed weight picks one point whatever the user asks for.

What it does not show: language, tokenizers or a transformer backbone (see
``icrm_kernels.integrations.hf`` for the HF head and ``format_demonstrations`` for the prompt
format), nor ICRM's paper-scale numbers. The summary of demonstrations is a hand-made
sufficient feature for this linear toy world, not attention over demonstration tokens.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn

import icrm_kernels as ik
from icrm_kernels.nn import BetaRewardHead

D = 8  # feature width
K_MAX = 16
SHARP = 8.0  # preference sharpness


class World:
    """The synthetic world: response features, objectives and users (see the module docstring)."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.g = g
        self.mix = torch.linalg.qr(torch.randn(D, D, generator=g))[0]

    def responses(self, *shape):
        t = torch.rand(*shape, generator=self.g) * (math.pi / 2)
        r = 0.6 + 0.4 * torch.rand(*shape, generator=self.g)
        o = torch.stack([r * torch.cos(t), r * torch.sin(t)], -1)
        noise = 0.3 * torch.randn(*shape, D - 2, generator=self.g)
        return torch.cat([o, noise], -1) @ self.mix, o

    def prefer(self, oa, ob, w, noisy=True):
        du = w * (oa[..., 0] - ob[..., 0]) + (1 - w) * (oa[..., 1] - ob[..., 1])
        if not noisy:
            return (du > 0).float()
        return torch.bernoulli(torch.sigmoid(SHARP * du), generator=self.g)

    def episodes(self, n, ks=None, w=None):
        """n users, each with k demonstrations and one query pair."""
        w = torch.rand(n, generator=self.g) if w is None else torch.full((n,), float(w))
        ks = torch.randint(0, K_MAX + 1, (n,), generator=self.g) if ks is None else ks
        xa, oa = self.responses(n, K_MAX)
        xb, ob = self.responses(n, K_MAX)
        y = self.prefer(oa, ob, w[:, None])
        used = (torch.arange(K_MAX)[None] < ks[:, None]).float()
        signed = (2 * y - 1)[..., None] * (xa - xb) * used[..., None]
        summary = signed.sum(1) / ks.clamp(min=1)[:, None]
        qa, qoa = self.responses(n)
        qb, qob = self.responses(n)
        ctx = torch.cat([summary, (ks.float() / K_MAX)[:, None]], -1)
        return dict(ctx=ctx, qa=qa, qb=qb, y=self.prefer(qoa, qob, w), y_true=self.prefer(qoa, qob, w, noisy=False),
                    w=w, ks=ks, xa=xa, xb=xb, ya=y, qoa=qoa, qob=qob)


class InContextRM(nn.Module):
    """h(x, demonstrations) -> BetaRewardHead; a pair is scored with ``score_pair``."""

    def __init__(self, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2 * D + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.head = BetaRewardHead(hidden, tau_min=1e-2)

    def pair_logits(self, ctx, qa, qb):
        return self.head.pair_logits(self.trunk(torch.cat([qa, ctx], -1)), self.trunk(torch.cat([qb, ctx], -1)))


class ObjectiveRM(nn.Module):
    """One Beta head per objective on a shared trunk (n_obj = 1: the fixed-weight model)."""

    def __init__(self, n_obj, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(D, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.heads = nn.ModuleList(BetaRewardHead(hidden, tau_min=1e-2) for _ in range(n_obj))

    def alpha_beta(self, x):
        h = self.trunk(x)
        ab = [ik.beta_from_logits(*head.logits(h), head.tau_min) for head in self.heads]
        return torch.stack([a for a, _ in ab], -1), torch.stack([b for _, b in ab], -1)


def _train(loss_fn, params, steps, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def in_context_accuracy(world, steps, n_eval, batch=256):
    model = InContextRM()

    def loss_fn():
        e = world.episodes(batch)
        m, c = model.pair_logits(e["ctx"], e["qa"], e["qb"])
        return ik.beta_elbo_loss_from_logits(m, c, e["y"], kl_weight=0.01)

    _train(loss_fn, model.parameters(), steps)
    # held-out users: the same users, demonstrations and query pairs at every k
    e = world.episodes(n_eval, ks=torch.full((n_eval,), K_MAX))
    acc = []
    with torch.no_grad():
        for k in range(K_MAX + 1):
            used = (torch.arange(K_MAX)[None] < k).float()
            signed = (2 * e["ya"] - 1)[..., None] * (e["xa"] - e["xb"]) * used[..., None]
            ctx = torch.cat([signed.sum(1) / max(k, 1), torch.full((n_eval, 1), k / K_MAX)], -1)
            m, c = model.pair_logits(ctx, e["qa"], e["qb"])
            mean = ik.beta_stats(*ik.beta_from_logits(m, c, model.head.tau_min)).mean
            acc.append(float(((mean > 0.5).float() == e["y_true"]).float().mean()))
    return acc


def steering_hypervolume(world, steps, n_prompts, n_cand=32, n_weights=11, batch=256):
    steerable, fixed = ObjectiveRM(2), ObjectiveRM(1)

    def steer_loss():
        xa, oa = world.responses(batch)
        xb, ob = world.responses(batch)
        h_a, h_b = steerable.trunk(xa), steerable.trunk(xb)
        loss = 0.0
        for j, head in enumerate(steerable.heads):  # objective j's own pairwise labels
            y = world.prefer(oa, ob, torch.full((batch,), 1.0 - j))
            loss = loss + ik.beta_elbo_loss_from_logits(*head.pair_logits(h_a, h_b), y, kl_weight=0.01)
        return loss

    def fixed_loss():
        xa, oa = world.responses(batch)
        xb, ob = world.responses(batch)
        y = world.prefer(oa, ob, torch.full((batch,), 0.5))
        m, c = fixed.heads[0].pair_logits(fixed.trunk(xa), fixed.trunk(xb))
        return ik.beta_elbo_loss_from_logits(m, c, y, kl_weight=0.01)

    _train(steer_loss, steerable.parameters(), steps)
    _train(fixed_loss, fixed.parameters(), steps)
    weights = torch.linspace(0, 1, n_weights)
    hv = {"steer": [], "fixed": [], "pareto": []}
    example = None
    with torch.no_grad():
        for p in range(n_prompts):
            x, o = world.responses(n_cand)
            ref = o.min(0).values
            a, b = steerable.alpha_beta(x)
            picks = torch.stack([ik.steer(a, b, torch.stack([w, 1 - w])).argmax() for w in weights])
            fa, fb = fixed.alpha_beta(x)
            fixed_pick = ik.steer(fa, fb, torch.ones(1)).argmax()
            hv["steer"].append(float(ik.hypervolume(o[picks], ref)))
            hv["fixed"].append(float(ik.hypervolume(o[fixed_pick][None], ref)))
            hv["pareto"].append(float(ik.hypervolume(o, ref)))
            if example is None:
                example = dict(o=o, steer=o[picks], fixed=o[fixed_pick])
    return {k: sum(v) / len(v) for k, v in hv.items()}, example


def run(small: bool = False, seed: int = 0, png: str | None = None, verbose: bool = True) -> dict:
    """Train and evaluate both parts; returns ``{"accuracy": [17 floats], "hypervolume": {...},
    "seconds": ...}``. ``small`` shrinks training and evaluation (~10x) for the test."""
    torch.manual_seed(seed)
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few KB: threads only add overhead (and contention)
    try:
        world = World(seed)
        steps, n_eval, n_prompts = (300, 2000, 20) if small else (2500, 20000, 200)
        acc = in_context_accuracy(world, steps, n_eval)
        hv, example = steering_hypervolume(world, steps // 2 if small else steps, n_prompts)
    finally:
        torch.set_num_threads(threads)
    out = {"accuracy": acc, "hypervolume": hv, "seconds": time.time() - t0}
    if verbose:
        print("preference accuracy vs number of in-context demonstrations k (held-out users, noiseless labels)")
        print(" k  " + " ".join(f"{k:>5d}" for k in range(K_MAX + 1)))
        print("acc " + " ".join(f"{a:5.3f}" for a in acc))
        print(f"\nhypervolume of the picks over {11} test-time weights (mean over {n_prompts} prompts of 32 candidates)")
        print(f"  steer (two Beta heads, test-time weights): {hv['steer']:.4f}")
        print(f"  fixed-weight model (w = 0.5):              {hv['fixed']:.4f}")
        print(f"  candidates' Pareto front (ceiling):        {hv['pareto']:.4f}")
        print(f"\n{out['seconds']:.1f} s (one CPU thread)")
    if png:
        _plot(acc, hv, example, png)
        out["png"] = png
    return out


def _plot(acc, hv, example, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(range(len(acc)), acc, marker="o")
    ax1.set_xlabel("in-context demonstrations k")
    ax1.set_ylabel("preference accuracy (held-out users)")
    ax1.set_title("ICRM Beta head: accuracy rises with k")
    ax1.grid(alpha=0.3)
    o = example["o"]
    ax2.scatter(o[:, 0], o[:, 1], s=12, c="lightgray", label="candidates")
    s = example["steer"]
    ax2.plot(s[:, 0], s[:, 1], "o-", c="C0", label=f"steer, weights 0..1 (mean HV {hv['steer']:.3f})")
    f = example["fixed"]
    ax2.scatter([f[0]], [f[1]], marker="*", s=200, c="C3", label=f"fixed weight (mean HV {hv['fixed']:.3f})")
    ax2.set_xlabel("objective 1")
    ax2.set_ylabel("objective 2")
    ax2.set_title(f"one prompt's picks (Pareto ceiling {hv['pareto']:.3f})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the test's size (~10x less training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=os.path.join(os.path.dirname(__file__), "..", "docs", "icrm_steering.png"),
                        help="where to save the plot ('' for none)")
    args = parser.parse_args(argv)
    run(small=args.small, seed=args.seed, png=args.png or None)


if __name__ == "__main__":
    main()
