"""Convert Hugging Face / GGUF checkpoints into an Ascend-ready layout, and verify the result.

Imports here stay light (no torch) so the CLI answers `--help` fast; import submodules for the work.
"""
