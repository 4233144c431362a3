"""The cost of a trainable temperature: uniformity forward + backward with t a tensor that requires grad, against a
number, in one process, interleaved (torch.utils.benchmark). Usage: python bench/bench_temperature.py [N] [D]"""

import json
import sys

import torch
from torch.utils.benchmark import Timer

import hyperloss

n, d = (int(a) for a in (sys.argv[1:] or ["8192", "128"]))
x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)
x.requires_grad_()
temperatures = {"t a number": 2.0, "t requires grad": torch.tensor(2.0, requires_grad=True)}
code = "x.grad = None; hyperloss.uniform_loss(x, t).backward()"
medians = {name: [] for name in temperatures}
for _ in range(5):  # alternate, so that a change in the machine's load hits both
    for name, t in temperatures.items():
        timer = Timer(code, globals={"x": x, "t": t, "hyperloss": hyperloss})
        medians[name].append(timer.blocked_autorange(min_run_time=1.0).median)
result = {name: sorted(times)[len(times) // 2] * 1e3 for name, times in medians.items()}
result |= {"ratio": result["t requires grad"] / result["t a number"], "n": n, "d": d, "backend": "auto (cpu)"}
print(json.dumps(result, indent=1))
