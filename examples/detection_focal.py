"""Detection-style training with the sigmoid focal loss (RetinaNet's classification loss) and
smooth L1 box regression.

Each "image" has 256 anchors; about 3% of them cover an object (foreground). A small head predicts,
per anchor, one objectness logit and 4 box offsets from the anchor's feature vector. The focal loss
(fastloss.functional.sigmoid_focal_loss, torchvision's signature and formula, fused) is summed and
divided by the number of foreground anchors, as RetinaNet does; smooth L1 is taken on foreground
anchors only. Runs on the CPU in seconds.

    python examples/detection_focal.py
"""
import torch
from torch import nn

import fastloss
import fastloss.functional as FL


def make_batch(n_images, generator, anchors=256, dim=16):
    """Anchor features (n, anchors, dim), objectness targets (n, anchors) and box targets (n, anchors, 4)."""
    feats = torch.randn(n_images, anchors, dim, generator=generator)
    fg = torch.rand(n_images, anchors, generator=generator) < 0.03
    feats[fg, :4] += 2.0                       # foreground anchors look different in 4 features
    boxes = 0.5 * feats[..., 4:8]              # the offsets are a function of the features
    return feats, fg.float(), boxes


def main(steps=50):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
    cls_head, box_head = nn.Linear(32, 1), nn.Linear(32, 4)
    params = [*body.parameters(), *cls_head.parameters(), *box_head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    box_loss_fn = fastloss.SmoothL1Loss(beta=1.0 / 9, reduction="sum")  # RetinaNet's beta
    for step in range(steps):
        feats, objectness, boxes = make_batch(8, g)
        h = body(feats)
        logits = cls_head(h).squeeze(-1)
        num_fg = objectness.sum().clamp(min=1.0)
        cls_loss = FL.sigmoid_focal_loss(logits, objectness, alpha=0.25, gamma=2.0, reduction="sum") / num_fg
        fg = objectness.bool()
        box_loss = box_loss_fn(box_head(h)[fg], boxes[fg]) / num_fg
        loss = cls_loss + box_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            print(f"step {step:3d}  focal {cls_loss.item():.4f}  box {box_loss.item():.4f}")
    feats, objectness, _ = make_batch(32, g)
    with torch.no_grad():
        scores = torch.sigmoid(cls_head(body(feats)).squeeze(-1))
    # foreground anchors should score well above background ones (alpha = 0.25 keeps scores modest)
    fg_score = scores[objectness.bool()].mean().item()
    bg_score = scores[~objectness.bool()].mean().item()
    print(f"mean score: foreground {fg_score:.3f}, background {bg_score:.3f}")
    assert fg_score > 3 * bg_score and fg_score > 0.2, (fg_score, bg_score)
    return fg_score, bg_score


if __name__ == "__main__":
    main()
