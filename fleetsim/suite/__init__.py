"""The reproduction suite: planning and running it, tuning, verdicts, the document, its archive."""
