"""zentry.cmd: the command line (one module per subcommand)."""

#: zentry's version; pyproject.toml's [project] version must equal it (a unit
#: test checks). Kept here because importlib.metadata costs ~90 ms to import,
#: more than most commands' whole run.
VERSION = "0.1.0"


def long_running() -> None:
    """Called by commands that may live for hours (tap, events, wait, metrics-server,
    a foreground run/exec): the console script starts with the garbage collector off
    (a CLI call lives for a moment, and collections during imports cost ~5-15 ms);
    these turn it back on, with what was imported frozen out of its scans."""
    import gc

    gc.freeze()
    gc.enable()
