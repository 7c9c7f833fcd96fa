"""Why the CA refused a request: named reasons (a metric label) mapped to HTTP statuses."""

from __future__ import annotations

import enum
from http import HTTPStatus


class Reason(enum.StrEnum):
    UNAUTHENTICATED = "Unauthenticated"
    NODE_NOT_AUTHORIZED = "NodeNotAuthorized"
    MALFORMED_REQUEST = "MalformedRequest"
    CSR_MALFORMED = "CsrMalformed"
    CSR_BAD_SIGNATURE = "CsrBadSignature"
    CSR_KEY_TYPE = "CsrKeyType"
    CSR_SAN = "CsrSanMismatch"
    INVALID_IDENTITY = "InvalidIdentity"
    WRONG_TRUST_DOMAIN = "WrongTrustDomain"
    TTL = "InvalidTtl"


STATUS = {
    Reason.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    Reason.NODE_NOT_AUTHORIZED: HTTPStatus.FORBIDDEN,
    Reason.WRONG_TRUST_DOMAIN: HTTPStatus.FORBIDDEN,
}


class Refusal(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def status(self) -> HTTPStatus:
        return STATUS.get(self.reason, HTTPStatus.BAD_REQUEST)
