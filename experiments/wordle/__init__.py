"""Wordle (docs/algorithm.md §7): the game, scripted policies and offline data sets."""
