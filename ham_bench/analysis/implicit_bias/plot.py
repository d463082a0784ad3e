"""The implicit-bias figure: L1 / distances against alpha, flow limits, a wrong-sign coordinate's path, flips."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ham_bench.analysis.implicit_bias.problem import Problem  # noqa: E402
from ham_bench.atomic_io import savefig  # noqa: E402


def plot(aggs: list[dict], flow_aggs: list[dict], traces: dict, prob: Problem, args):
    by = {a["method"]: a for a in aggs}
    alphas = sorted(args.alphas)
    ham = [by[f"ham_a={a:g}"] for a in alphas]
    xs = [max(a, 0.1) for a in alphas]  # alpha = 0 drawn at 0.1 on the log axis
    fig, ax = plt.subplots(2, 3, figsize=(18, 10))

    a = ax[0, 0]
    a.errorbar(xs, [h["l1_over_bp"] for h in ham], [h["l1_over_bp_std"] for h in ham], marker="o", lw=2, label="HAM (trained)")
    a.axhline(1.0, color="g", ls="--", label="basis pursuit (min L1)")
    a.axhline(by["ref:min-L2"]["l1_over_bp"], color="r", ls="--", label="min-L2")
    for i, g in enumerate(args.mw_gammas):
        a.axhline(by[f"mw_gamma={g:g}"]["l1_over_bp"], ls="-.", lw=1, color=f"C{i + 1}", label=f"m*w, gamma {g:g}")
    a.set(xscale="log", xlabel="alpha (0 drawn at 0.1)", ylabel="L1 norm / basis-pursuit L1 (mean ± std)",
          title="L2 -> L1: L1 norm of the interpolant reached")
    a.legend(fontsize=8)

    a = ax[0, 1]
    for key, label in (("dist_bp", "to basis pursuit (= theta* here)"), ("dist_l2", "to min-L2"), ("dist_pred", "to its own flow limit")):
        a.errorbar(xs, [h[key] for h in ham], [h[key + "_std"] for h in ham], marker="o", label=label)
    a.set(xscale="log", yscale="log", xlabel="alpha (0 drawn at 0.1)", ylabel="L2 distance", title="HAM limit: distances")
    a.legend(fontsize=8)

    a = ax[0, 2]
    for i, scale in enumerate(args.pred_init_scales):
        pts = [f for f in flow_aggs if f["init_scale"] == scale and f["method"].startswith("ham_a=")]
        px = [max(float(f["method"][6:]), 0.1) for f in pts]
        a.errorbar(px, [f["l1_over_bp"] for f in pts], [f["l1_over_bp_std"] for f in pts], marker="s", color=f"C{i}", label=f"HAM flow limit, init {scale:g}")
        pts = [f for f in flow_aggs if f["init_scale"] == scale and f["method"].startswith("mw_gamma=")]
        # sqrt(gamma^2 + 4 theta^2) ~ gamma (1 + (2 / gamma)|theta|): m*w at gamma is HAM at alpha ~ 2 / gamma, re-timed
        px = [2.0 / float(f["method"][9:]) for f in pts]
        a.plot(px, [f["l1_over_bp"] for f in pts], "x--", color=f"C{i}", label=f"m*w flow limit, init {scale:g} (x = 2/gamma)")
    a.axhline(1.0, color="g", ls="--")
    a.set(xscale="log", xlabel="alpha (HAM) or 2/gamma (m*w)", ylabel="L1 / basis-pursuit L1",
          title="flow limits without training (mean ± std over seeds)")
    a.legend(fontsize=8)

    wrong = prob.support[np.sign(prob.theta0[prob.support]) != np.sign(prob.theta_star[prob.support])]
    idx = wrong[0] if len(wrong) else prob.support[0]
    names = ["gd"] + [f"mw_gamma={g:g}" for g in args.mw_gammas] + [f"ham_a={a:g}" for a in alphas if a >= 10]
    for col, (xkey, xlabel) in enumerate((("steps", "step + 1"), ("time", "flow time = sum of lr (0 drawn at 1e-6)"))):
        a = ax[1, col]
        for i, name in enumerate(names):
            tr = traces[name]
            x = tr[xkey] + 1 if xkey == "steps" else np.maximum(tr[xkey], 1e-6)
            a.plot(x, tr["theta"][:, idx] * np.sign(prob.theta_star[idx]), color=f"C{i}", label=name)
        a.axhline(0, color="k", lw=0.5)
        a.set(xscale="log", yscale="symlog", xlabel=xlabel, ylabel="theta_i * sign(theta*_i)",
              title=f"a support coordinate that starts with the wrong sign (seed {args.seeds[0]}, i = {idx})")
        a.set_yscale("symlog", linthresh=1e-4)
        a.legend(fontsize=7)

    a = ax[1, 2]
    meth = [x for x in aggs if not x["method"].startswith("ref:")]
    pos = np.arange(len(meth))
    a.bar(pos - 0.2, [x["flips"] for x in meth], 0.4, yerr=[x["flips_std"] for x in meth], label="all coordinates")
    a.bar(pos + 0.2, [x["support_flips"] for x in meth], 0.4, yerr=[x["support_flips_std"] for x in meth], label="true support")
    a.set_xticks(pos)
    a.set_xticklabels([x["method"] for x in meth], rotation=45, ha="right", fontsize=8)
    a.set(ylabel="sign flips over the run", title="sign flips (mean ± std over seeds)")
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plot(path, aggs: list[dict], flow_aggs: list[dict], traces: dict, prob: Problem, args) -> None:
    figure = plot(aggs, flow_aggs, traces, prob, args)
    savefig(path, figure, dpi=100)
    plt.close(figure)
