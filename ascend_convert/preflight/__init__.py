"""`ascendkit preflight`: will this checkpoint load in the target engine (vllm-ascend)?

A static check of any checkpoint directory — this toolkit's output, msModelSlim's, or one made by
hand — against the loader rules of one engine release, for one deployment (SoC, tensor and expert
parallel sizes, dtype). It reads `config.json`, the JSON files beside it and the safetensors headers
only (dtypes and shapes, never the data), so a 671B checkpoint is checked in seconds.

The rules are data (`rules/<engine>-<release>.json`): each names what the loader does (refuse, skip,
cast, fail at the FRACTAL_NZ cast) and the line of the loader's code it was read from. The checks
(`check_*.py`) are the code that applies them; a release that lacks a rule does not apply it.
"""
