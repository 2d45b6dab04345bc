"""cinema_trt.serving."""
