"""The embedded assistant world: synthetic prompts whose responses have verifiable gold scores.

Fourteen task families (`FAMILIES`) cover format, knowledge, honesty, refusals and over-refusals,
instruction following and multi-turn edits. Each family draws train and test prompts from disjoint
template and entity pools, so test scores measure generalisation. Every score applies the same
stop/rambling penalty (`core.finish`): no EOS multiplies the gold score by `NO_STOP_FACTOR` (0.0),
rambling (over 3x the reference length + 20 characters, or an invented next turn) by `RAMBLE_FACTOR`
(0.5). Pure Python and deterministic; nothing here imports torch.

    tasks = sample_tasks(140, split="test", seed=0)
    result = score(tasks[0], response_text, stopped=True)   # result.gold, result.checks
"""

from posttrain.world.core import NO_STOP_FACTOR, RAMBLE_FACTOR, SPLITS, Family, Pool, Score, Task
from posttrain.world.world import FAMILIES, get_family, sample_tasks, score

__all__ = ["FAMILIES", "NO_STOP_FACTOR", "RAMBLE_FACTOR", "SPLITS", "Family", "Pool", "Score", "Task",
           "get_family", "sample_tasks", "score"]
