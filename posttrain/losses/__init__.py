"""Losses: pure functions of tensors. Inputs are tensors and scalars, never a model or a config."""
