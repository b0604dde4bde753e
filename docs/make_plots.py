"""Draw the loss-shape figures of the docs (docs/images/regression.png, focal.png, hinge.png) with
fastloss itself: every curve is fastloss's forward, and every gradient curve is `x.grad` after
fastloss's backward (reduction='none', summed), so the pictures show what the kernels compute.

    python docs/make_plots.py            # from the repository root; needs matplotlib and a built fastloss
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's fastloss, not another installed copy

import torch  # noqa: E402

import fastloss  # noqa: E402

F = fastloss.functional
OUT = os.path.join(ROOT, "docs", "images")


def loss_and_grad(fn, x):
    """fastloss's loss of each element of x and d(loss)/dx, both as numpy arrays."""
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def _axes(plt, title):
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8))
    fig.suptitle(title, fontsize=11)
    a0.set_title("loss")
    a1.set_title("gradient d(loss)/dx (fastloss backward)")
    for a in (a0, a1):
        a.axhline(0, color="#999999", lw=0.5)
        a.axvline(0, color="#999999", lw=0.5)
        a.grid(alpha=0.3)
    return fig, a0, a1


def regression(plt):
    """smooth L1 for several beta, L1 and Huber for several delta, against d = input - target."""
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    zero = torch.zeros_like(x)
    fig, a0, a1 = _axes(plt, "L1, smooth L1 and Huber (target 0, input x)")
    curves = [("L1", lambda v: F.l1_loss(v, zero, reduction="none"), "black", "-")]
    for beta, c in ((0.5, "#1b9e77"), (1.0, "#d95f02"), (2.0, "#7570b3")):
        curves.append((f"smooth L1, beta={beta}",
                       lambda v, b=beta: F.smooth_l1_loss(v, zero, reduction="none", beta=b), c, "-"))
        curves.append((f"Huber, delta={beta}",
                       lambda v, b=beta: F.huber_loss(v, zero, reduction="none", delta=b), c, "--"))
    for label, fn, color, style in curves:
        loss, grad = loss_and_grad(fn, x)
        a0.plot(x.numpy(), loss, style, color=color, label=label, lw=1.4)
        a1.plot(x.numpy(), grad, style, color=color, lw=1.4)
    a0.set_ylim(0, 3.2)
    a0.legend(fontsize=7)
    for a in (a0, a1):
        a.set_xlabel("x - target")
    return fig


def focal(plt):
    """sigmoid focal loss for several gamma (target 1, alpha 0.25), against the logit."""
    x = torch.linspace(-6, 6, 601, dtype=torch.float64)
    one = torch.ones_like(x)
    fig, a0, a1 = _axes(plt, "sigmoid focal loss, target 1, alpha 0.25 (gamma 0 = alpha-weighted BCE with logits)")
    for gamma, c in ((0.0, "black"), (0.5, "#1b9e77"), (1.0, "#d95f02"), (2.0, "#7570b3"), (5.0, "#e7298a")):
        loss, grad = loss_and_grad(lambda v, g=gamma: F.sigmoid_focal_loss(v, one, alpha=0.25, gamma=g), x)
        a0.plot(x.numpy(), loss, color=c, label=f"gamma={gamma:g}", lw=1.4)
        a1.plot(x.numpy(), grad, color=c, lw=1.4)
    a0.legend(fontsize=8)
    for a in (a0, a1):
        a.set_xlabel("logit x")
    return fig


def hinge(plt):
    """The hinge family against the score: hinge_embedding (target -1), margin_ranking (target 1,
    input2 = 0), soft_margin (target 1), multi_margin with two classes (p 1 and 2)."""
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    fig, a0, a1 = _axes(plt, "hinge family (margin 1 unless stated)")

    def multi_margin(v, p):
        # two classes, target 0: scores (v, 0), so z = 1 - v; torch divides by C = 2
        scores = torch.stack([v, zero], dim=1)
        return F.multi_margin_loss(scores, torch.zeros(len(v), dtype=torch.long), p=p, reduction="none")

    curves = [
        ("hinge_embedding, target -1: max(0, 1 - x)",
         lambda v: F.hinge_embedding_loss(v, -one, margin=1.0, reduction="none"), "#1b9e77"),
        ("margin_ranking(x, 0), target 1, margin 0.5: max(0, 0.5 - x)",
         lambda v: F.margin_ranking_loss(v, zero, one, margin=0.5, reduction="none"), "#d95f02"),
        ("soft_margin, target 1: log(1 + exp(-x))",
         lambda v: F.soft_margin_loss(v, one, reduction="none"), "#7570b3"),
        ("multi_margin p=1, 2 classes, score gap x", lambda v: multi_margin(v, 1), "#e7298a"),
        ("multi_margin p=2, 2 classes, score gap x", lambda v: multi_margin(v, 2), "#66a61e"),
    ]
    for label, fn, color in curves:
        loss, grad = loss_and_grad(fn, x)
        a0.plot(x.numpy(), loss, color=color, label=label, lw=1.4)
        a1.plot(x.numpy(), grad, color=color, lw=1.4)
    a0.set_ylim(0, 4)
    a0.legend(fontsize=6.5)
    for a in (a0, a1):
        a.set_xlabel("score x")
    return fig


FIGURES = {"regression.png": regression, "focal.png": focal, "hinge.png": hinge}


def main():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    for name, make in FIGURES.items():
        fig = make(plt)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, name), dpi=100)
        plt.close(fig)
        print("wrote", os.path.join("docs", "images", name))


if __name__ == "__main__":
    main()
