"""`python cli.py bench ...`: one module per benchmark, each a `run(...)` that measures and returns printable figures.

They live under eval/ (the top layer below the CLI) because a benchmark may build anything below it: the cache DAG,
a trainer's loader, a model. Speed and memory goals are measured here, never asserted in tests."""
