"""hallocd's status codes as Python exceptions.

Every error the client raises is a HallocError whose ``code`` is a
grpc.StatusCode, the same code on either path: a gRPC call's status, a
broker reply's ``code`` (proto/halloc/v1/broker.proto: a google.rpc.Code),
or an errno from this process's own system calls (mapped as libhalloc maps
them, clients/cpp/halloc/base/os_error.cc). What each code means and whether a retry
can help is documented once, in proto/halloc/v1/allocator.proto.
"""

import errno

import grpc


class HallocError(Exception):
    """A refusal or failure, with the gRPC status code that names it."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(HallocError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnauthenticatedError(HallocError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(HallocError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(HallocError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhaustedError(HallocError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(HallocError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnimplementedError(HallocError):
    code = grpc.StatusCode.UNIMPLEMENTED


class UnavailableError(HallocError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(HallocError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLossError(HallocError):
    code = grpc.StatusCode.DATA_LOSS


class InternalError(HallocError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (
    InvalidArgumentError, UnauthenticatedError, PermissionDeniedError,
    NotFoundError, ResourceExhaustedError, FailedPreconditionError,
    UnimplementedError, UnavailableError, DeadlineExceededError,
    DataLossError, InternalError)}

_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}

_BY_ERRNO = {
    **dict.fromkeys((errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOSPC,
                     errno.EAGAIN, errno.ETOOMANYREFS, errno.EFBIG),
                    grpc.StatusCode.RESOURCE_EXHAUSTED),
    **dict.fromkeys((errno.EINVAL, errno.E2BIG, errno.EOVERFLOW, errno.EBADF),
                    grpc.StatusCode.INVALID_ARGUMENT),
    **dict.fromkeys((errno.EPERM, errno.EACCES), grpc.StatusCode.PERMISSION_DENIED),
    **dict.fromkeys((errno.ENOENT, errno.ENODEV, errno.ENXIO), grpc.StatusCode.NOT_FOUND),
    **dict.fromkeys((errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS),
                    grpc.StatusCode.UNIMPLEMENTED),
    **dict.fromkeys((errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED),
                    grpc.StatusCode.UNAVAILABLE),
    errno.ETIMEDOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def error_for(code, message):
    """The exception for `code` (a grpc.StatusCode or its number)."""
    if not isinstance(code, grpc.StatusCode):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, HallocError)
    return cls(message, code)


def from_rpc_error(err, method):
    """A grpc.RpcError from a unary call, as a HallocError naming `method`."""
    return error_for(err.code(), f"{method}: {err.details()}")


def from_os_error(err, what):
    """An OSError from a system call, as 'what: strerror'."""
    code = _BY_ERRNO.get(err.errno, grpc.StatusCode.INTERNAL)
    return error_for(code, f"{what}: {err.strerror or err}")
