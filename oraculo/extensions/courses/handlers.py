"""``/api/v1/courses/<cohort>``: a cohort's assignments; ``.../assignments/<name>/<step>``:
one nbgrader step (release, collect, autograde, feedback; fetch, submit, fetch_feedback)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.courses.models import ActionResult, CourseView, PolicyIn
from oraculo.openapi import operation


class CoursesHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(await self.feature("courses").service.overview())


class CourseUsageHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, cohort: str) -> None:
        feature = self.feature("courses")
        self.finish(await feature.service.usage(cohort, feature.models))


class CourseRosterHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, cohort: str) -> None:
        self.finish(await self.feature("courses").service.roster(cohort))


class CoursePolicyHandler(OraculoAPIHandler):
    @operation(summary="Set the cohort's AI policy (its instructors).", request=PolicyIn)
    @web.authenticated
    @authorized
    async def put(self, cohort: str) -> None:
        self.finish(
            await self.feature("courses").service.set_policy(
                cohort, self.parse_body(PolicyIn).model_dump()
            )
        )


class CourseHandler(OraculoAPIHandler):
    @operation(
        summary="The cohort's assignments as the caller sees them.", responses={200: CourseView}
    )
    @web.authenticated
    @authorized
    async def get(self, cohort: str) -> None:
        view = await self.feature("courses").service.view(cohort)
        self.finish(view.model_dump_json())


class AssignmentStepHandler(OraculoAPIHandler):
    @operation(summary="Run one nbgrader step of an assignment.", responses={200: ActionResult})
    @web.authenticated
    @authorized
    async def post(self, cohort: str, assignment: str, step: str) -> None:
        result = await self.feature("courses").service.run(cohort, assignment, step)
        self.finish(result.model_dump_json())
