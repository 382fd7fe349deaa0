"""The kafka-mesh command's families, one module each: its argparse parser and what it runs (sidecar/cli.py wires
them)."""
