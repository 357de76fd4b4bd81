"""zentry.cmd: the command line (one module per subcommand)."""

#: zentry's version; pyproject.toml's [project] version must equal it (a unit
#: test checks). Kept here because importlib.metadata costs ~90 ms to import,
#: more than most commands' whole run.
VERSION = "0.1.0"
