"""Training: pure loss functions and the one training loop."""
