"""Shared training pieces: optimiser and schedule, atomic checkpoints, losses."""
