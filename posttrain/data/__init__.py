"""Data: reading files, the canonical example types, rendering with the loss mask, batching."""
