"""The engine's bookkeeping, apart from the model: sequences, the KV block pool, the scheduler."""
