"""ZipStream's benchmarks: `make bench ARGS=--help`. Results go to bench/results/local/ (make) or --results."""
