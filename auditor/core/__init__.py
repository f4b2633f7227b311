"""Plain types every layer shares; imports nothing above the standard library at run time."""
