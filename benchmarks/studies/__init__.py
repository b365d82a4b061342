"""One-off studies: experiments whose findings are in docs/; each module has its own --help
and writes its results beside it, in benchmarks/studies/results/."""
