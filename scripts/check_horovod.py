"""Smoke check run by scripts/setup.sh under `horovodrun -np 2`: allreduce across ranks."""
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
expected = hvd.size() * (hvd.size() + 1) / 2
assert total.item() == expected, f"allreduce gave {total.item()}, expected {expected}"
if hvd.rank() == 0:
    print(f"horovod allreduce ok across {hvd.size()} ranks (sum={total.item():g})")
