"""The recommendation service (extra ``[serve]``): an HTTP API serving top-k with confidence,
a durable event store of impressions and feedback, API keys with scopes and Prometheus
metrics.

Importing :mod:`wager` never imports this package; its modules import FastAPI / SQLAlchemy
at the top, so ``import wager.serving.app`` without the extra fails with the install hint of
:func:`wager._optional.require` where the CLI calls it.
"""
