"""Where the time of one cross_entropy forward+backward goes on CUDA (kernel by kernel), and how
the row-kernel configurations compare. python tools/profile_ce.py [ROWS CLASSES DTYPE]"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import fastloss
from fastloss.bench import timeit

args = [a for a in sys.argv[1:] if not a.startswith("--")]
rows, classes = (int(args[0]), int(args[1])) if len(args) > 1 else (8192, 128256)
dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args[2] if len(args) > 2 else "bf16"]
dev = torch.device("cuda")
x = torch.randn(rows, classes, device=dev, dtype=dtype, requires_grad=True)
t = torch.randint(0, classes, (rows,), device=dev)
nbytes = x.numel() * x.element_size() * 2
ops = torch.ops.fastloss


def fb():
    x.grad = None
    fastloss.functional.cross_entropy(x, t).backward()


def fwd_grad_op():
    ops.cross_entropy(x.detach(), t, None, 1, -100, 0.0, True, False, None)


for _ in range(3):
    fb()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        fb()
    torch.cuda.synchronize()
if "--table" in sys.argv:
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
print(f"{rows}x{classes} {dtype}: fwd+bwd {timeit(fb, dev) * 1e3:.3f} ms")
for cfg in [1, 2, 3]:
    for cap in [-1, 0]:
        ops._set_option("ce_config", cfg)
        ops._set_option("ce_smem_vecs", cap)
        tt = timeit(fwd_grad_op, dev)
        print(f"  forward op with grad, config {cfg} smem cap {cap}: {tt * 1e3:.3f} ms = {nbytes / tt / 1e9:.0f} GB/s")
ops._set_option("ce_config", -1)
ops._set_option("ce_smem_vecs", -1)
old = fastloss.set_target_validation(False)
print(f"  fwd+bwd without the target check: {timeit(fb, dev) * 1e3:.3f} ms")
fastloss.set_target_validation(old)
y = torch.empty_like(x)
print(f"  copy of the logits: {timeit(lambda: y.copy_(x), dev) * 1e3:.3f} ms")
