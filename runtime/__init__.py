"""Runtime: the on-disk kernel cache and compiled attention modules (SPEC 3, Runtime)."""
