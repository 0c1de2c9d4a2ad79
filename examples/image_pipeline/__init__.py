"""The seed image pipeline (see issue 3)."""
