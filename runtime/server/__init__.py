"""The OpenAI-compatible server: the engine on its own thread (`async_engine`), request schemas
(`protocol`), response shapes and streaming (`serving`), routes and errors (`app`), Prometheus
metrics (`metrics`) and the `serve` command (`cli`)."""
