"""cinema_trt.engines."""
