// gRPC's own log lines, rate-limited and escaped like every line an
// outsider can trigger.
//
// gRPC core writes its lines (gpr_log) straight to stderr, and some carry
// a client's bytes whole: gRPC 1.51's HPACK parser logs "Error parsing
// metadata: ... value=<the value>" for every header block with a bad
// grpc-timeout, content-type, te, ... A local uid with no session sent
// ~9,300 such lines in 10 s (64 KiB each, newlines and escape sequences
// raw: forged AUDIT lines in the journal, 54 MB/s, journald's per-unit
// budget spent and every other uid's lines dropped with it).
#ifndef HALLOC_SERVICE_UTIL_GRPC_LOG_H_
#define HALLOC_SERVICE_UTIL_GRPC_LOG_H_

namespace halloc {

// From now on gRPC's lines go through glog: prefixed "gRPC", at most a few
// a second (with a count of those dropped), their file and message escaped
// and cut (message: 512 bytes). gRPC cannot say whose data a line is
// about, so one budget serves all; an assertion's line, which comes just
// before gRPC aborts, is never dropped. For the process: hallocd's main
// calls it once, before gRPC runs.
void LimitGrpcLogs();

}  // namespace halloc

#endif  // HALLOC_SERVICE_UTIL_GRPC_LOG_H_
