"""An LM head trained with linear cross-entropy (torch >= 2.14's F.linear_cross_entropy signature).

A tiny next-token model over a 1024-token vocabulary: embedding, one MLP block, and the output
projection folded into the loss. fastloss.functional.linear_cross_entropy with
torch.nn.LinearCrossEntropyOptions(batch_chunk_size=...) takes the rows in chunks: per chunk one GEMM
makes the logits, fastloss's fused cross-entropy gives the loss and d/dlogits in one pass, and two
GEMMs fold that into the gradients, so the (tokens, vocabulary) logits never exist at once. The
synthetic "language": the next token is (3 * token + 1) mod V. Runs on the CPU in seconds.

    python examples/lm_head_linear_ce.py
"""

import torch
from torch import nn

import fastloss

VOCAB, DIM = 1024, 32


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))
        self.head = nn.Linear(DIM, VOCAB, bias=False)        # its weight goes to the loss, not a forward

    def hidden(self, tokens):
        h = self.embed(tokens)
        return h + self.mlp(h)


def main(steps=40):
    if not hasattr(torch.nn, "LinearCrossEntropyOptions"):  # the options object is torch >= 2.14's
        print(f"skipped: linear_cross_entropy needs torch >= 2.14 (this is {torch.__version__})")
        return None
    torch.manual_seed(0)
    model = TinyLM()
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        tokens = torch.randint(0, VOCAB, (256,))
        targets = (3 * tokens + 1) % VOCAB
        h = model.hidden(tokens)
        loss = fastloss.functional.linear_cross_entropy(h, model.head.weight, targets, label_smoothing=0.0,
                                                        options=options)
        if step == 0:  # the chunked loss is the whole-logits cross-entropy
            whole = torch.nn.functional.cross_entropy(model.head(h), targets)
            assert torch.allclose(loss, whole, rtol=1e-5), (loss, whole)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    tokens = torch.arange(VOCAB)
    with torch.no_grad():
        accuracy = (model.head(model.hidden(tokens)).argmax(1) == (3 * tokens + 1) % VOCAB).float().mean().item()
    print(f"next-token accuracy over the vocabulary {accuracy:.3f} (loss {loss.item():.3f})")
    assert loss.item() < 5.0, loss.item()   # log(1024) = 6.9 at the start
    return loss.item()


if __name__ == "__main__":
    main()
