"""Wordle (ILQL_SPEC §7): the game, scripted policies and offline data sets."""
