"""Benchmarks of skillkd, run from the repository root as modules: `python -m bench.NAME` (bench/README.md).

They import the engine's public names (core, service, api) like any other caller; none edits sys.path.
`bench.api_load` runs other checkouts on purpose, each in its own server process (see its docstring).
"""
