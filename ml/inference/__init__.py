"""Inference: composing keys from the model's heads (compose), the simulator's batched arm (arm),
the one-read-at-a-time stepper the live engine will run (stepper)."""
