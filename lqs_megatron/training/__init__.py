"""Training: the pretraining loop, its data stream, optimizer and schedule, checkpoints, evaluation."""
