"""The Reddit comments task (ILQL_SPEC §7): parent -> comment, rewarded by a toxicity judge."""
