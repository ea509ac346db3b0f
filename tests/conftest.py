"""Every test runs torch on one intra-op thread: the towers here are micro-sized, so a second
thread only adds a barrier per op, and on a busy 2-core machine each barrier can wait ~16 ms for
a descheduled thread (bench/README.md), which made single tests minutes long."""
import torch

torch.set_num_threads(1)
