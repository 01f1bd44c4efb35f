"""`ascendkit bench`: workloads run on the runtime beside baseline systems, the serving benchmark
over HTTP, latency statistics and the sweep plot."""
