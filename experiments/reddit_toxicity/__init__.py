"""The Reddit comments task (docs/algorithm.md §7): parent -> comment, rewarded by a toxicity judge."""
