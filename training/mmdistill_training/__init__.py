"""Offline side of mmdistill: datasets, losses, trainer, evaluation and the mmdistill CLI."""
