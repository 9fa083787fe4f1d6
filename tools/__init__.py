"""Release and test tooling, run by hand as `python -m tools.NAME` from the project root (see README.md)."""
