"""`cardinal`, the command line: `main` and the command table (main.py), the shared argument
types (args.py), and one module per command (plan + search, sim, serve, prove, render, calibrate,
catalog/show/check-accuracy/seeds in docs.py)."""

from gateway.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
