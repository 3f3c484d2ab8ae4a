"""The ask-to-identify dialogue benchmark (the paper's Visual Dialogue setting, offline)."""
