"""`python -m emocap_jax.evaluate --help`: see emocap_jax/evaluate/cli.py."""
import sys

from emocap_jax.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
