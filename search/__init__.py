"""OP-NAS evolution and BIWS training (SPEC 5). Not built yet."""
