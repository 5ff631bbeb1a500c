"""Suite-wide settings: tests use small tensors, for which one intra-op thread is fastest.

With two threads on a busy 2-core machine, tiny matrix products spend most of their time
synchronising; one thread keeps the suite fast and its timing steady. Subprocesses started
by tests inherit ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
