"""What proves a served model: the smoke test (answers against transformers), greedy and perplexity
comparisons, and the benchmarks (`bench/`). It drives the engine and the server; neither imports it."""
