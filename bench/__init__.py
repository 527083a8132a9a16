"""ZipStream's benchmarks (issue 5): `python -m bench --help`. Results go to bench/results/<name>.md."""
