// One record with file descriptors over a Unix socket (SCM_RIGHTS).
//
// Records are whole messages on SOCK_SEQPACKET. fds travel beside the bytes,
// are received close-on-exec, and are owned by UniqueFd from the moment they
// arrive, so every error path (truncation included) closes them.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_SCM_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_SCM_H_

#include <sys/socket.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "clients/cpp/halloc/base/unique_fd.h"

namespace halloc {

// Most fds one record may carry.
inline constexpr size_t kMaxFdsPerRecord = 64;
// The most fds the kernel lets one record carry (SCM_MAX_FD).
inline constexpr size_t kKernelMaxFdsPerRecord = 253;
// Largest record payload (an Allocate reply of 64 image buffers with their
// layouts fits).
inline constexpr size_t kMaxRecordBytes = 64 * 1024;

// Sends `bytes` and `fds` as one record. Never raises SIGPIPE. With
// `nonblocking`, a full socket buffer is RESOURCE_EXHAUSTED rather than a
// wait. EINTR is retried.
absl::Status SendRecord(int sock, absl::string_view bytes,
                        absl::Span<const int> fds, bool nonblocking);

struct Record {
  std::string bytes;
  std::vector<UniqueFd> fds;
  // The sender as the kernel stamped it (SCM_CREDENTIALS), when the
  // receiving socket has SO_PASSCRED.
  std::optional<ucred> creds;
};

// Receives one record. Peer closed → UNAVAILABLE "peer closed"; a record
// whose bytes or fds were truncated → DATA_LOSS (any fds that did arrive are
// closed). When only the fds were cut (MSG_CTRUNC: the receiver was out of
// fds, or an RLIMIT_NOFILE too small), the DATA_LOSS status carries the
// record's intact bytes as payload kTruncatedRecordPayload, so the receiver
// can tell the sender which fds it lost. With `nonblocking`, no record
// queued → RESOURCE_EXHAUSTED (EAGAIN); so is a blocking wait that the
// socket's receive timeout ended, or that a signal cut short under one.
//
// `max_fds` below kMaxFdsPerRecord makes room for only that many: a record
// with more is DATA_LOSS (with its bytes as payload kTruncatedRecordPayload
// where they were not cut), and the kernel drops the fds that did not fit
// without ever installing them here. A receiver that takes no fds passes 0
// on a socket with SO_PASSCRED (the sender's credentials, written first,
// fill the rest of the room): a closed fd runs its file's flush (a FUSE
// file's waits for the FUSE server, which a sender controls), a dropped one
// does not; but a dropped fd's release still runs on this thread when the
// record held its last reference (see RawRecord): a receiver that a sender
// must not be able to hold up uses ReceiveRawRecord. Without SO_PASSCRED
// that room would hold a few fds; they are closed here and the record is
// DATA_LOSS.
absl::StatusOr<Record> ReceiveRecord(int sock, bool nonblocking,
                                     size_t max_fds = kMaxFdsPerRecord);
inline constexpr absl::string_view kTruncatedRecordPayload = "halloc.dev/truncated-record";

// What one recvmsg brought beside its bytes.
struct Ancillary {
  std::vector<UniqueFd> fds;  // every fd that arrived, close-on-exec
  // The sender as the kernel stamped it, where the socket has SO_PASSCRED.
  std::optional<ucred> creds;
  bool bytes_cut = false;  // the message was longer than the room (MSG_TRUNC)
  bool fds_cut = false;    // some fds found no room and were dropped (MSG_CTRUNC)
  bool any = false;        // the kernel wrote any control data at all
};

// The one recvmsg beneath every receive here: into `into`, with room for
// the sender's credentials and `max_fds` fds (at most
// kKernelMaxFdsPerRecord); `flags` (MSG_DONTWAIT, MSG_PEEK, ...) are added
// to MSG_CMSG_CLOEXEC, and EINTR is retried. Every fd that arrived is owned
// by `out` whatever was cut, so no path can leak one. (Without SO_PASSCRED
// the credentials' room is left free and holds a few fds even at max_fds 0.) Returns the bytes
// read (0 on a stream: its end) or -errno; `out` is filled only on success.
// A signal is waited through (EINTR retried), except in a wait the socket's
// receive timeout (SO_RCVTIMEO) bounds: that would start again in full, so
// it is -EINTR for the caller to check its own deadline.
ssize_t ReceiveMessage(int sock, absl::Span<char> into, int flags, size_t max_fds,
                       Ancillary& out);

// One record as it came, cut or whole, with room for as many fds as the
// kernel lets a record carry: for a receiver that must decide itself on
// which thread fds it never asked for are closed. (Fds that find no room
// are dropped by the kernel, and when that drop is their last reference,
// their file's release runs on the receiving thread at its return from
// recvmsg: a TCP socket's with SO_LINGER waits out its linger time there.)
// Only when this process is out of fds (fds_cut) may some have been dropped.
// Peer closed → UNAVAILABLE (an empty record, which on a socket with
// SO_PASSCRED carries the sender's credentials, is a record); nothing
// queued (`nonblocking`) → RESOURCE_EXHAUSTED.
struct RawRecord {
  Record record;  // bytes as far as they fit in kMaxRecordBytes
  bool bytes_cut = false;  // longer than kMaxRecordBytes (MSG_TRUNC)
  bool fds_cut = false;    // some fds dropped by the kernel (MSG_CTRUNC)
};
absl::StatusOr<RawRecord> ReceiveRawRecord(int sock, bool nonblocking);

// Makes the kernel refuse, at the sender's sendmsg (EPERM), every record
// with fds for `sock` and for the connections a listening `sock` accepts
// from now on (SO_PASSRIGHTS off). UNIMPLEMENTED before Linux 6.16, which
// has no such option: there receive with ReceiveRawRecord and close what
// comes on a thread that may wait.
absl::Status RefuseIncomingFds(int sock);
// Whether records with fds may still reach `sock`: true before Linux 6.16,
// and for a connection made before its listener refused them (one waiting
// on a socket systemd handed over, say: it keeps what it had then).
bool AcceptsIncomingFds(int sock);

// Waits until `fd` is readable (or hung up) for at most `timeout_ms`
// (-1: forever), signals included. DEADLINE_EXCEEDED on timeout.
absl::Status WaitReadable(int fd, int timeout_ms);
// The same for room to write (a SOCK_SEQPACKET peer's queue with room).
absl::Status WaitWritable(int fd, int timeout_ms);

}  // namespace halloc

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_SCM_H_
