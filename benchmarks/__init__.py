"""cinema_trt.benchmarks."""
