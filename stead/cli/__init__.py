"""The ``stead`` command line: one module per command group, wired together in
:mod:`stead.cli.app`.

    stead = "stead.cli:main"    # the entry point
"""


def main() -> None:
    """Entry point of the ``stead`` script (imports the commands only when run)."""
    from stead.cli.app import main as run

    run()
