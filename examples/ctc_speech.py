"""A toy CTC "speech" model: a small network reads a sequence of acoustic frames and emits
per-frame log-probabilities over 6 symbols + blank, trained with fastloss.CTCLoss (torch.nn.CTCLoss's
constructor; padded targets, per-sample lengths), then decoded greedily.

The synthetic "audio": each symbol of the transcript is a few frames of its own prototype vector plus
noise, symbols separated by silence frames. Runs on the CPU in seconds.

    python examples/ctc_speech.py
"""
import torch
from torch import nn

import fastloss

SYMBOLS, BLANK, FEAT = 6, 0, 12


def make_batch(n, generator, prototypes, max_len=5):
    """Frames (T, n, FEAT), padded targets (n, max_len) with labels in 1..SYMBOLS, and the lengths."""
    target_lengths = torch.randint(2, max_len + 1, (n,), generator=generator)
    targets = torch.randint(1, SYMBOLS + 1, (n, max_len), generator=generator)
    seqs = []
    for i in range(n):
        frames = []
        for s in targets[i, :target_lengths[i]].tolist():
            frames += [prototypes[s]] * 3 + [prototypes[0]]   # 3 frames per symbol, then silence
        seqs.append(torch.stack(frames))
    input_lengths = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(int(input_lengths.max()), n, FEAT)
    for i, s in enumerate(seqs):
        x[:len(s), i] = s
    x += 0.3 * torch.randn(x.shape, generator=generator)
    return x, targets, input_lengths, target_lengths


class Model(nn.Module):
    """Per-frame acoustic model: features -> log-probabilities over blank + SYMBOLS. CTC learns the
    alignment (which frames are a symbol, which are blank); a real model would add context (convolutions,
    an RNN or attention) in the same place."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEAT, 64), nn.ReLU(), nn.Linear(64, SYMBOLS + 1))

    def forward(self, x):                                    # x: (T, N, FEAT)
        return self.net(x).log_softmax(-1)                   # (T, N, C)


def greedy_decode(log_probs, lengths):
    """Best path: argmax per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).T
    out = []
    for seq, n in zip(best.tolist(), lengths.tolist()):
        labels, prev = [], BLANK
        for s in seq[:n]:
            if s != prev and s != BLANK:
                labels.append(s)
            prev = s
        out.append(labels)
    return out


def main(steps=50):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prototypes = 2.0 * torch.randn(SYMBOLS + 1, FEAT, generator=g)
    model = Model()
    ctc = fastloss.CTCLoss(blank=BLANK, zero_infinity=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        x, targets, input_lengths, target_lengths = make_batch(8, g, prototypes)
        loss = ctc(model(x), targets, input_lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            print(f"step {step:3d}  ctc loss {loss.item():.4f}")
    x, targets, input_lengths, target_lengths = make_batch(32, g, prototypes)
    with torch.no_grad():
        decoded = greedy_decode(model(x), input_lengths)
    truth = [targets[i, :n].tolist() for i, n in enumerate(target_lengths.tolist())]
    exact = sum(d == t for d, t in zip(decoded, truth)) / len(truth)
    print(f"example: truth {truth[0]} decoded {decoded[0]}; exact transcripts {exact:.2f}")
    assert exact > 0.8, exact
    return exact


if __name__ == "__main__":
    main()
