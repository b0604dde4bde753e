"""An out-of-range CUDA target must raise IndexError (debug aid for the device machine)."""
import torch

import fastloss

x = torch.randn(4, 5, device="cuda")
for fn in [fastloss.functional.cross_entropy, fastloss.functional.nll_loss]:
    try:
        fn(x, torch.tensor([0, 1, 2, 5], device="cuda"))
        print("no error raised!")
    except IndexError as e:
        print("IndexError ok:", str(e).splitlines()[0])
