"""cinema_trt.export."""
