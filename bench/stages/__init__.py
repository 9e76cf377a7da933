"""The stages of bench/run.py, one module each; imported with bench/ on sys.path."""
