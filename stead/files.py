"""Files named on a command line: a file stands for itself, a directory for the matching files
under it (recursively, sorted), so every command that reads files takes directories too.

    suites = expand_paths([Path("evals")], ("*.yaml", "*.yml"), what="suite", error=SuiteError)
    policy = one_file(Path("agents/refund"), ("*.yaml", "*.yml"), what="policy",
                      error=PolicyError)

A directory that holds no matching file, or a path that does not exist, is bad input: the
error (of the caller's type, so each command keeps its own error and exit code) names the path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


def expand_paths(paths: Sequence[Path], patterns: Sequence[str], *, what: str,
                 error: Callable[[str], Exception]) -> list[Path]:
    """The files ``paths`` name, in order: a file as given, a directory as its files matching
    any of ``patterns`` (searched recursively, sorted by path)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted({f for pattern in patterns for f in p.rglob(pattern) if f.is_file()})
            if not found:
                raise error(f"{p}: no {' or '.join(patterns)} {what} files in this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise error(f"{p}: no such file or directory")
    return files


def one_file(path: Path, patterns: Sequence[str], *, what: str,
             error: Callable[[str], Exception]) -> Path:
    """``path`` itself, or the one file matching ``patterns`` in the directory ``path``; a
    directory holding several is bad input that lists them."""
    files = expand_paths([path], patterns, what=what, error=error)
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(path)) for f in files)
        raise error(f"{path}: holds {len(files)} {what} files ({names}); one is needed: "
                    f"name the file")
    return files[0]
