"""Helpers the guide's notebooks call: parameters, host connections, steps, queries, output.

Notebook cells stay short and read like the guide; the mechanics live here.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
