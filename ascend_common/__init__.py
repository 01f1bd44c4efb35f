"""What every part of ascend-deploy-kit stands on, and nothing that converts, traces or serves:
one-line errors, the console scripts' shared behaviour, atomic report writes, size parsing, the SoC
profiles, where models are (the bundled SmolLM2, `from_pretrained` arguments), and the version.

It imports no torch and no other package of this project: `ascend_convert`, `opcheck`, `runtime`
and `ascendkit` import it, never the other way (docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
