"""The command line: ``attnopt train|pretrain|test|predict|plot|report|info|compare``
(:mod:`attnopt.cli.commands`)."""
