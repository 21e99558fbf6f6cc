"""Usage: kernel compute reported to the model service, budgets checked before new work."""
