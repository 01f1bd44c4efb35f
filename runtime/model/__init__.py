"""The model the engine runs: its config (from any family's spec), the one decoder every family
uses (families differ in data, not code), and the loader that fills it from a converted directory.
New model structure (mixture-of-experts, MLA) goes here."""
