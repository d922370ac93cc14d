"""Error responses in OpenAI's shape."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from jaxgpt.serve.protocol import error_body


class ApiError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = error_body(str(self), self.kind, self.param, self.code)
        return JSONResponse(body, self.status, headers=self.headers)
