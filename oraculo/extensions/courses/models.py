"""The courses API's wire models (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: What an instructor does to an assignment, then what a student does.
INSTRUCTOR_ACTIONS = ("release", "collect", "autograde", "feedback")
STUDENT_ACTIONS = ("fetch", "submit", "fetch_feedback")
Action = Literal["release", "collect", "autograde", "feedback", "fetch", "submit", "fetch_feedback"]

#: A cohort or assignment name as nbgrader and the file system accept it.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ActionResult(BaseModel):
    """What one nbgrader step did."""

    cohort: str
    assignment: str
    action: Action
    #: Where the files went, in the caller's home (fetch, fetch_feedback) or course folder.
    path: str = ""
    #: nbgrader's own log lines (INFO and above) of the step.
    log: list[str] = Field(default_factory=list)


class Score(BaseModel):
    student: str
    score: float
    max_score: float
    needs_manual_grade: bool = False
    submitted_at: str | None = None


class Assignment(BaseModel):
    name: str
    #: Released to the cohort (in the exchange's outbound folder).
    released: bool = False
    #: This user's copy: fetched into their home, submitted (timestamps), feedback fetched.
    fetched: bool = False
    submitted: list[str] = Field(default_factory=list)
    feedback: list[str] = Field(default_factory=list)
    #: Instructor only: source notebooks exist in the course folder, and the gradebook's scores.
    in_source: bool = False
    max_score: float | None = None
    scores: list[Score] = Field(default_factory=list)


class CourseView(BaseModel):
    """One cohort as the caller sees it."""

    cohort: str
    course_id: str
    #: Whether the caller owns the course folders (the cohort's instructor).
    instructor: bool
    course_dir: str
    assignments: list[Assignment]


class PolicyIn(BaseModel):
    """A cohort's AI policy as the Cohort panel sends it; the hub validates its fields
    (:class:`oraculo.policy.CohortPolicy`) and its 400 message reaches the panel."""

    model_config = ConfigDict(extra="allow")
