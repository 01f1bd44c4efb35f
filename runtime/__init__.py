"""The paged-attention runtime that smoke-serves converted models: see DESIGN.md §runtime."""
