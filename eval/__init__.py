"""Face verification with the published protocol: ``metrics`` (pure numpy), ``embeddings`` (image + flip),
``sets`` (``.bin`` sets of a folder, evaluated), ``report`` (table, JSON, ROC), ``verification`` (the command)."""
