"""A tiny bundled text-to-image model on a synthetic shapes world: GAG vs PLADIS vs baseline end to end on a CPU."""
