"""Uncertainty estimators: wrap models and return :class:`~wager.prediction.Prediction`."""
