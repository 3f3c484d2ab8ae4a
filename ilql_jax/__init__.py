"""ilql_jax: Implicit Language Q-Learning in JAX/Flax."""
