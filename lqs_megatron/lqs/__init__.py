"""LQS annotation engine: trajectory replay, costate, per-example statistics, the ``lqs annotate`` driver."""
