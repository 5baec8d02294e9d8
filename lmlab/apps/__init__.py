"""The applications: one module per ``lmlab`` command, each with ``run(args) -> int``."""
