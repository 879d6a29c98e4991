"""``python -m stead.cli``: the same as the ``stead`` command."""

from stead.cli import main

if __name__ == "__main__":
    main()
