"""The engine: sequences, the KV block pool, the scheduler, the model runner that executes one
step, the sampler, the LLM engine that ties them together, and the tensor-parallel executor and
worker processes. It imports the model and the layers; they never import it."""
