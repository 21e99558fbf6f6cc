"""Course material out, work back in: nbgrader driven for a cohort (see feature.py)."""
