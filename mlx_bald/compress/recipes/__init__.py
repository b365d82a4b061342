"""The recipes, end to end on real speech: bald (BaldWhisper, decoder side), encoder (pruning
and/or AdaPTwin), combine (both joined into one checkpoint). Each keeps its state in one
``skeleton.RecipeRun`` (report, options, resume, rank 0 writes)."""
