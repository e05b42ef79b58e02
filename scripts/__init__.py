"""The command-line programs (scripts/train.py, ...); installed, each is also a
`jaxfrontier-*` console command (pyproject.toml [project.scripts])."""
