"""`python -m memstream.cli`: the same command line as the `memstream` script."""

from memstream.cli import main

main()
