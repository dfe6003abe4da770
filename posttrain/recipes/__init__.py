"""Recipes: one file per method, each a config dataclass and a `main(cfg)` whose loop reads top to bottom."""
