"""The rules (schema, loading, judging) and the gate's outputs (JUnit, annotations)."""
