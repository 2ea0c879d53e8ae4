"""Training the next-key model: data preparation, the training loop, evaluation."""
