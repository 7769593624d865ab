"""halloc: the Python client of hallocd (see client.py for an example).

The message and service modules (halloc.v1.*_pb2, *_pb2_grpc) are generated
from proto/ at build time (clients/python/BUILD.bazel), never committed.
Under Bazel they sit beside these files in the runfiles tree; outside it,
put both clients/python and bazel-bin/clients/python on PYTHONPATH: this
package then spans the two directories.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

# pylint: disable=wrong-import-position
from .client import Buffer, BufferDescriptor, Client, CpuAccess, blob, fourcc, image
from .errors import (DataLossError, DeadlineExceededError, FailedPreconditionError,
                     HallocError, InternalError, InvalidArgumentError, NotFoundError,
                     PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError,
                     UnavailableError, UnimplementedError)
from .mapping import Access, Mapping

__all__ = [
    "Access", "Buffer", "BufferDescriptor", "Client", "CpuAccess", "Mapping",
    "blob", "fourcc", "image",
    "HallocError", "DataLossError", "DeadlineExceededError", "FailedPreconditionError",
    "InternalError", "InvalidArgumentError", "NotFoundError", "PermissionDeniedError",
    "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError",
    "UnimplementedError",
]
