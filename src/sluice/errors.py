"""One error tree. Each error knows its HTTP status and its public type and code.

    SluiceError
    ├── RequestError                 400  invalid_request_error
    │   ├── BodyTooLarge             413
    │   ├── HeadersTooLarge          431
    │   ├── NotFound                 404  (unknown route)
    │   ├── MethodNotAllowed         405
    │   ├── UnsupportedMediaType     415  (a Content-Encoding the gateway cannot decode)
    │   ├── ModelNotFound            404  model_not_found
    │   ├── Unsupported              400  unsupported_parameter (not in the upstream's format)
    │   └── ContextWindowExceeded    400  context_length_exceeded (the upstream said so)
    ├── AuthenticationError          401
    ├── PermissionDenied             403
    ├── RateLimited                  429
    │   └── BudgetExceeded           429  insufficient_quota (as OpenAI; not retryable)
    ├── ServiceUnavailable           503  service_unavailable (a shared dependency is down)
    │   └── ShuttingDown             503  shutting_down (draining after SIGTERM)
    └── UpstreamError                502  upstream_error
        ├── UpstreamStatusError      the upstream answered with an error status
        ├── UpstreamConnectError     503
        ├── UpstreamTimeout          504
        ├── UpstreamTLSError         the upstream's certificate did not verify
        └── UpstreamProtocolError    the upstream's stream broke or was malformed

Foreign exceptions are mapped once, at the boundary (providers for upstream I/O,
dialects for request bodies), keeping the cause with ``raise ... from exc``.
"""

from __future__ import annotations


class SluiceError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    #: Response headers an error of this kind carries unless it is given its own.
    default_headers: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(self.default_headers) if headers is None else headers


class RequestError(SluiceError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class HeadersTooLarge(RequestError):
    status = 431
    code = "request_header_fields_too_large"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class Unsupported(RequestError):
    """A request field the chosen upstream's format cannot carry: refused, never dropped."""

    code = "unsupported_parameter"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class ContextWindowExceeded(RequestError):
    """The messages do not fit the model's context window (the upstream said so).
    Routing may fall back to a model with a larger window."""

    code = "context_length_exceeded"


class AuthenticationError(SluiceError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(SluiceError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class RateLimited(SluiceError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """The key spent its budget. OpenAI answers an exhausted quota with 429
    ``insufficient_quota``, which clients already handle; ``x-should-retry: false``
    tells the SDKs that retrying will not help."""

    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"x-should-retry": "false"})


class ServiceUnavailable(SluiceError):
    """Something the gateway needs for this request is down (Redis, when rate limits
    are configured to fail closed); retrying later can help."""

    status = 503
    code = "service_unavailable"


class ShuttingDown(ServiceUnavailable):
    """The gateway is draining after SIGTERM: it takes no new requests, and a stream
    still running when the grace is over ends with this error. Another instance can
    serve the retry (``Connection: close`` sends the client there)."""

    code = "shutting_down"
    default_headers = (("Connection", "close"),)


class UpstreamError(SluiceError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; the status is kept for the client
    when it is one the client can act on (400, 401→502, 404, 429, ...)."""

    #: The status the upstream answered with (the client may be shown another one).
    upstream_status: int = 0


class UpstreamConnectError(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTLSError(UpstreamError):
    """TLS to the upstream failed (its certificate did not verify): a 502 naming the
    reason, not a 503, since trying again will not change the certificate."""

    code = "upstream_tls_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
