"""Reward functions the GRPO tests pass as `module:function` (tests/ is on sys.path under pytest)."""

import math


def short(messages, response, meta):
    """Shorter is better: a signal a random tiny model can learn within a few steps (stop sooner)."""
    return -len(response) / 50.0


def letters(messages, response, meta):
    """A reward with a spread within a group: the share of the response's characters that are 'e'."""
    return response.count("e") / max(len(response), 1)


def boom(messages, response, meta):
    raise RuntimeError("the reward server is down")


def not_a_number(messages, response, meta):
    return "0.5"


def nan_for_empty_meta(messages, response, meta):
    return math.nan if len(response) % 2 else 1.0
