"""Evaluation: pure metric functions, OPE, simulation, A/B statistics, reports."""
