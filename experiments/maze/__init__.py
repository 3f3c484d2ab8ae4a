"""LMRL-Gym's maze (fully and partially observed), ported, with BC, %BC and ILQL on its kind of data."""
