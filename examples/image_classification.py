"""Image classification with cross-entropy and label smoothing.

A small CNN learns to tell which quadrant of a noisy 16x16 image is bright (4 classes), trained with
fastloss.CrossEntropyLoss(label_smoothing=0.1): the same constructor and result as
torch.nn.CrossEntropyLoss, one fused pass for the loss and its gradient. Runs on the CPU in seconds.

    python examples/image_classification.py
"""
import torch
from torch import nn

import fastloss


def make_batch(n, generator):
    """Images (n, 1, 16, 16): noise plus one bright quadrant; the label is that quadrant."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.5 * torch.randn(n, 1, 16, 16, generator=generator)
    for q in range(4):
        rows, cols = slice(8 * (q // 2), 8 * (q // 2) + 8), slice(8 * (q % 2), 8 * (q % 2) + 8)
        images[labels == q, :, rows, cols] += 1.0
    return images, labels


def main(steps=30):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    loss_fn = fastloss.CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        images, labels = make_batch(32, g)
        loss = loss_fn(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    images, labels = make_batch(512, g)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    print(f"held-out accuracy {accuracy:.3f}")
    assert accuracy > 0.9, accuracy  # the task is easy: a broken loss or gradient would not learn it
    return accuracy


if __name__ == "__main__":
    main()
