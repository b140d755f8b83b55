"""Face verification (SPEC §6): ``eval.metrics`` (pure protocol numpy) and ``eval.verification`` (embedding, CLI)."""
