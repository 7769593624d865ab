"""CPU mappings of buffers: an mmap.mmap, bracketed on dma-bufs.

Like libhalloc's Mapping: CPU access to a mapping of a dma-buf is
bracketed with DMA_BUF_IOCTL_SYNC START/END (memfds need no bracket), from
map to close, or in brackets of its own on a mapping kept across frames
(end_access(), begin_access()). Close it (or use it as a context manager)
to unmap; closing ends the bracket if begun. CPython's mmap keeps its own dup of the fd, so a mapping may
outlive the Buffer it came from.
"""

import enum
import fcntl
import mmap
import os
import struct

from . import _scm, errors

# linux/dma-buf.h: DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync).
_DMA_BUF_IOCTL_SYNC = (1 << 30) | (8 << 16) | (ord("b") << 8) | 0
_DMA_BUF_SYNC_READ = 1 << 0
_DMA_BUF_SYNC_RW = _DMA_BUF_SYNC_READ | (1 << 1)
_DMA_BUF_SYNC_START = 0 << 2
_DMA_BUF_SYNC_END = 1 << 2


class Access(enum.Enum):
    READ = "read"
    READ_WRITE = "read-write"


def is_dmabuf(fd):
    """Whether `fd` is a dma-buf (else a memfd): only dma-bufs show their
    exporter in /proc/self/fdinfo."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            return any(line.startswith(b"exp_name:") for line in f)
    except OSError:
        return False


def _sync(fd, flags):
    fcntl.ioctl(fd, _DMA_BUF_IOCTL_SYNC, struct.pack("=Q", flags))


class Mapping(mmap.mmap):
    """An mmap.mmap of a whole buffer (shared). Use `with` or close()."""

    def begin_access(self):
        """Begins CPU access again after end_access(): DMA_BUF_SYNC_START on
        a dma-buf (what devices wrote since is made visible to the CPU, on
        hardware whose caches are not coherent too). FailedPreconditionError
        when closed or begun already; the ioctl's error otherwise (a view
        revoked since)."""
        self._turn("begin_access", begun=False)
        self._bracket(_DMA_BUF_SYNC_START, "START")
        self._in_access = True

    def end_access(self):
        """Ends CPU access (map_fd began it): DMA_BUF_SYNC_END on a dma-buf
        (what the CPU wrote is made visible to devices). Touch the memory
        only between a begin and its end. FailedPreconditionError when
        closed or ended already; the ioctl's error otherwise (the access is
        ended either way)."""
        self._turn("end_access", begun=True)
        self._in_access = False
        self._bracket(_DMA_BUF_SYNC_END, "END")

    def _bracket(self, edge, name):
        """A dma-buf's DMA_BUF_SYNC `edge` (START, END); nothing on a memfd."""
        sync = self.__dict__.get("_sync_fd")
        if sync is not None:
            try:
                _sync(sync.fileno(), edge | self._sync_flags)
            except OSError as e:
                raise errors.from_os_error(e, f"DMA_BUF_IOCTL_SYNC({name})") from None

    def _turn(self, what, begun):
        if self.closed:
            raise errors.FailedPreconditionError(f"{what}: not mapped")
        if self.__dict__.get("_in_access", True) != begun:
            raise errors.FailedPreconditionError(
                f"{what}: CPU access is {'ended' if begun else 'begun'} already")

    def close(self):
        super().close()  # BufferError while memoryviews of it live: nothing done
        sync = self.__dict__.pop("_sync_fd", None)
        begun = self.__dict__.pop("_in_access", True)
        if sync is not None:
            try:
                if begun:
                    _sync(sync.fileno(), _DMA_BUF_SYNC_END | self._sync_flags)
            except OSError:
                # Unmapped already: an END the exporter refuses (ENODEV once
                # the producer revoked the view) leaves nothing to undo, and
                # must not replace what a with block raised (libhalloc's
                # Mapping ignores it too).
                pass
            finally:
                sync.close()

    def __exit__(self, *exc):
        # mmap's own __exit__ closes at the C level, past close() above: the
        # sync bracket would end (and the fd close) only when collected.
        self.close()
        return False

    def __del__(self):
        if "_sync_fd" in self.__dict__:
            self.close()


def map_fd(fd, size, access, what, dmabuf=None):
    """Maps `size` bytes of `fd` shared, for `access`; errors name `what`.
    `dmabuf`: whether `fd` is a dma-buf, when the caller knows (hallocd's
    BufferInfo.fd_kind); None: /proc/self/fdinfo is read to tell."""
    if not isinstance(access, Access):
        raise TypeError(f"access must be a halloc.Access, not {access!r}")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if access is Access.READ_WRITE else 0)
    try:
        m = Mapping(fd, size, flags=mmap.MAP_SHARED, prot=prot)
    except OSError as e:
        raise errors.from_os_error(e, f"mmap {what} for {access.value}") from None
    except (ValueError, OverflowError):
        # Python's mmap refuses to map a regular file (a memfd) past its
        # end, and a size past its C types (2^63 or more) before that: a
        # description larger than its fd (a buggy or foreign daemon's), as
        # libhalloc says it.
        raise errors.DataLossError(
            f"{what} is {size} bytes by its description but its fd has "
            f"{os.fstat(fd).st_size}") from None
    if is_dmabuf(fd) if dmabuf is None else dmabuf:
        flags = _DMA_BUF_SYNC_READ if access is Access.READ else _DMA_BUF_SYNC_RW
        own = None
        try:
            own = _scm.OwnedFd(os.dup(fd))  # our own, for the END
            _sync(own.fileno(), _DMA_BUF_SYNC_START | flags)
        except OSError as e:
            if own is not None:
                own.close()
            mmap.mmap.close(m)
            raise errors.from_os_error(e, "dup and DMA_BUF_IOCTL_SYNC(START)") from None
        m._sync_flags = flags
        m._sync_fd = own
    return m
