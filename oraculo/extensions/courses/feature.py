"""The courses feature: course material out and work back in for a cohort, with nbgrader's own
commands and exchange (see service.py), for the Cohort panel and any API client."""

from __future__ import annotations

from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.courses.handlers import (
    AssignmentStepHandler,
    CourseHandler,
    CoursePolicyHandler,
    CourseRosterHandler,
    CoursesHandler,
    CourseUsageHandler,
)
from oraculo.extensions.courses.service import CourseService

_NAME = r"[^/]+"


class CoursesFeature(Feature):
    name = "courses"

    service_class = Type(
        CourseService,
        klass=CourseService,
        config=True,
        help="Runs nbgrader's steps for the server's user.",
    )
    service = Instance(CourseService)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = self.service_class(parent=self, owner=self.extension.owner)

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/courses", CoursesHandler),
            (rf"/api/v1/courses/({_NAME})", CourseHandler),
            (rf"/api/v1/courses/({_NAME})/usage", CourseUsageHandler),
            (rf"/api/v1/courses/({_NAME})/roster", CourseRosterHandler),
            (rf"/api/v1/courses/({_NAME})/policy", CoursePolicyHandler),
            (
                rf"/api/v1/courses/({_NAME})/assignments/({_NAME})/({_NAME})",
                AssignmentStepHandler,
            ),
        ]
