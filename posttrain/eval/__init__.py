"""Evaluation: scores of a model, starting with the embedded assistant world (`evaluate_world`)."""

from posttrain.eval.world import evaluate_world, raw_prompt, summarize

__all__ = ["evaluate_world", "raw_prompt", "summarize"]
