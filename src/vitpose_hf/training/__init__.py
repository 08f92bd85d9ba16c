"""Training with Accelerate and model cards."""
