"""One module per ``mmdistill`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
