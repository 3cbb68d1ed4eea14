"""Run under torchrun: set up, build an optimizer (which imports torch._dynamo), all-reduce, tear down; print the
threads left. None of gloo's may remain, or one can abort the process at interpreter shutdown."""
import os

import torch

from shared.training import distributed

rank, world = distributed.setup(torch.device("cpu"))
layer = torch.nn.Linear(3, 3)
torch.optim.Adam(layer.parameters())
layer.weight.grad, layer.bias.grad = torch.ones(3, 3), torch.ones(3)
distributed.average_gradients(list(layer.parameters()), world)
distributed.teardown()
names = sorted(open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
print(f"rank {rank} threads after teardown: {names}", flush=True)
