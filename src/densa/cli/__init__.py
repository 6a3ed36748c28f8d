"""The `densa` command: the parser (one builder per subcommand) and what each subcommand does."""

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
