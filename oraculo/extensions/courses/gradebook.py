"""Scores from nbgrader's gradebook (``gradebook.db`` in the instructor's course folder)."""

from __future__ import annotations

from pathlib import Path

from oraculo.extensions.courses.models import Score


def read_scores(db: Path) -> dict[str, tuple[float, list[Score]]]:
    """``{assignment: (max score, [each submission's score])}``; empty before the first
    release. Blocking (sqlite): call it in a thread."""
    if not db.is_file():
        return {}
    from nbgrader.api import Gradebook  # imports SQLAlchemy's ORM: only where it is read

    out: dict[str, tuple[float, list[Score]]] = {}
    with Gradebook(f"sqlite:///{db}") as gb:
        for a in gb.assignments:
            scores = [
                Score(
                    student=s["student"],
                    score=float(s["score"] or 0),
                    max_score=float(s["max_score"] or 0),
                    needs_manual_grade=bool(s["needs_manual_grade"]),
                    submitted_at=s["timestamp"].isoformat() if s.get("timestamp") else None,
                )
                for s in gb.submission_dicts(a.name)
            ]
            out[a.name] = (float(a.max_score or 0), sorted(scores, key=lambda s: s.student))
    return out
