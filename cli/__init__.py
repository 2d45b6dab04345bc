"""The `cinema-trt` command line: one thin subcommand per use."""
