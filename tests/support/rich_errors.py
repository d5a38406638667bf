"""Reading the google.rpc.Status a service sends with an error (grpc-status-details-bin)."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.ResourceInfo,
)


def unpack_status(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[Message]]:
    """The ErrorInfo (which every error must carry) and the other details, unpacked."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error has no google.rpc.Status detail"
    assert status.code == error.code().value[0]
    info: error_details_pb2.ErrorInfo | None = None
    others: list[Message] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        for kind in DETAIL_TYPES:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                others.append(message)
    assert info is not None, "every error carries ErrorInfo"
    assert info.domain == "phoneseller"
    return info, others
