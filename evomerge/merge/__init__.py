"""The parameter space: merge recipes, the merge methods, and the engine that materializes a recipe in
place."""
