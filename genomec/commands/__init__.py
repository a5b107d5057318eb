"""The `genomec` subcommands: one module each, thin wrappers over library functions."""
