"""Test-suite settings: one intra-op thread (tests use tiny tensors, where thread start-up
costs more than it saves, and CI machines are small)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
