"""Models: loading any Hugging Face causal LM and its tokenizer, tiny models for tests and demos, LoRA."""
