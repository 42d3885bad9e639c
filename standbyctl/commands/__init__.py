"""standbyctl subcommands, one module per group."""
