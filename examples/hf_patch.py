"""A Hugging Face transformers model trained under fastloss.patch().

transformers computes its losses through torch.nn.functional at run time (a causal LM's loss calls
nn.functional.cross_entropy), so fastloss.patch() routes them to fastloss without touching the model
code. The model is a 2-layer GPT-2 built from a config (no download); the script counts the calls
that reach fastloss's cross_entropy to show the patch took effect. Needs transformers (not a
fastloss requirement); runs on the CPU in seconds.

    python examples/hf_patch.py
"""
import torch

import fastloss


def main(steps=20):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print("skipped: transformers is not installed")
        return None
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    calls = 0
    fast_ce = fastloss.functional.cross_entropy

    def counting_ce(*args, **kwargs):  # count, then run fastloss's kernel
        nonlocal calls
        calls += 1
        return fast_ce(*args, **kwargs)

    fastloss.patch()
    torch.nn.functional.cross_entropy = counting_ce  # on top of the patch, to show it is reached
    try:
        for step in range(steps):
            # a repeating pattern the model can learn: 0 1 2 ... 15 0 1 2 ...
            start = torch.randint(0, 16, (8, 1))
            input_ids = (start + torch.arange(32)) % 16
            loss = model(input_ids=input_ids, labels=input_ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 5 == 0:
                print(f"step {step:3d}  loss {loss.item():.4f}")
    finally:
        fastloss.unpatch()
    print(f"fastloss cross_entropy calls: {calls}; final loss {loss.item():.4f}")
    assert calls >= steps, calls
    assert loss.item() < 3.0, loss.item()   # log(64) = 4.2 at the start
    return loss.item()


if __name__ == "__main__":
    main()
