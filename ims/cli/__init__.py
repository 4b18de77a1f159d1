"""Command-line shims: each module parses one command's options and calls the library."""
