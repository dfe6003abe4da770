"""Rollout: sampling from a model (generation), shared by `posttrain generate`, evaluation and RL."""
