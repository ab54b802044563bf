"""Outside data brought into the task's record shape: `import` (a local dataset mapped by a TOML field
mapping) and `select` (the candidates most like the test inputs). Commands: sources/cli.py."""
