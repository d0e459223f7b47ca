"""Test-wide settings."""
import torch

# The tests' tensors are small: a second thread costs more in synchronization than it gains,
# and on a shared 2-core machine oversubscription slows them down many times.
torch.set_num_threads(1)
