"""``/api/v1/execute``: run code in the user's sandbox kernel, read results and the audit log."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.errors import BadRequest
from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.execute.models import (
    AuditQuery,
    AuditRecords,
    ExecuteRequest,
    ExecutionResult,
    WaitQuery,
)
from oraculo.openapi import operation

#: Longest a ``GET /api/v1/execute/{id}?wait=`` may wait, seconds.
MAX_WAIT = 60.0


class ExecuteHandler(OraculoAPIHandler):
    """``POST /api/v1/execute``: 200 with the result, or 202 + Location when ``detach``."""

    @operation(request=ExecuteRequest, responses={200: ExecutionResult, 202: ExecutionResult})
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(ExecuteRequest)
        result = await self.feature("execute").service.execute(
            body.code,
            language=body.language,
            timeout=body.timeout,
            session=body.session,
            origin=body.origin,
            conversation_id=body.conversation_id,
            actor=self.current_user.username,
            detach=body.detach,
        )
        if result.status == "running":
            self.set_status(202)
            self.set_header("Location", f"{self.base_url}api/v1/execute/{result.execution_id}")
        self.finish(result.model_dump(mode="json"))


class ExecutionHandler(OraculoAPIHandler):
    """``GET /api/v1/execute/{id}[?wait=seconds]``: an execution's result (so far);
    ``DELETE /api/v1/execute/{id}``: cancel it, answered with its result once it has stopped."""

    @operation(query=WaitQuery, responses={200: ExecutionResult})
    @web.authenticated
    @authorized
    async def get(self, execution_id: str) -> None:
        try:
            wait = float(self.get_query_argument("wait", "0"))
        except ValueError as e:
            raise BadRequest("wait must be a number of seconds") from e
        service = self.feature("execute").service
        if wait > 0:
            result = await service.wait(execution_id, min(wait, MAX_WAIT))
        else:
            result = service.get(execution_id)
        self.finish(result.model_dump(mode="json"))

    @operation(responses={200: ExecutionResult})
    @web.authenticated
    @authorized
    async def delete(self, execution_id: str) -> None:
        service = self.feature("execute").service
        result = await service.cancel(execution_id, actor=self.current_user.username)
        self.finish(result.model_dump(mode="json"))


class AuditHandler(OraculoAPIHandler):
    """``GET /api/v1/execute/audit[?limit=N&execution_id=...|?format=jsonl]``."""

    @operation(query=AuditQuery, responses={200: AuditRecords})
    @web.authenticated
    @authorized
    async def get(self) -> None:
        audit = self.feature("execute").service.audit
        if self.get_query_argument("format", "") == "jsonl":
            self.set_header("Content-Type", "application/x-ndjson")
            self.set_header("Content-Disposition", 'attachment; filename="executions.jsonl"')
            # APIHandler.finish would relabel the body application/json.
            web.RequestHandler.finish(self, await audit.export())
            return
        try:
            limit = int(self.get_query_argument("limit", "1000"))
        except ValueError as e:
            raise BadRequest("limit must be an integer") from e
        execution_id = self.get_query_argument("execution_id", "")
        records = await audit.read(limit=max(limit, 0), execution_id=execution_id)
        self.finish({"records": records})
