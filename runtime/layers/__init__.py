"""The runtime's building blocks, each usable on its own: paged attention, the fused-kernel seams
(`Kernels`), quantized linears in msModelSlim's layout, and the tensor-parallel collectives."""
