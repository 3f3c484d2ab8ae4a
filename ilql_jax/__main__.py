"""`python -m ilql_jax`: the `ilql-jax` command (see `ilql_jax.cli`)."""

import sys

from ilql_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
