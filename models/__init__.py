"""PyTorch reference definitions of every CINEMA stage, the sampler and the pipeline."""
