"""Models: plain ``nn.Module``s with ``forward()`` and ``loss(batch)``; no training loops here."""
