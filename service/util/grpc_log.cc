#include "service/util/grpc_log.h"

#include <grpc/support/log.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "service/util/log_limit.h"

namespace halloc {
namespace {

void LimitedGrpcLog(gpr_log_func_args* args) {
  static LogLimiter* const limiter = new LogLimiter(5, absl::Seconds(1));
  const absl::string_view message = args->message != nullptr ? args->message : "";
  uint64_t dropped = 0;
  // GPR_ASSERT logs this, then aborts.
  const bool fatal = absl::StartsWith(message, "assertion failed");
  if (!fatal && !limiter->Allow("gRPC", &dropped)) return;
  const std::string text =
      absl::StrCat("gRPC ", LogSafe(args->file != nullptr ? args->file : "?", 128), ":", args->line,
                   ": ", LogSafe(message, 512), LogLimiter::Dropped(dropped));
  switch (args->severity) {
    case GPR_LOG_SEVERITY_DEBUG:
    case GPR_LOG_SEVERITY_INFO:
      LOG(INFO) << text;
      break;
    case GPR_LOG_SEVERITY_ERROR:
      LOG(ERROR) << text;
      break;
  }
}

}  // namespace

void LimitGrpcLogs() {
  gpr_set_log_function(&LimitedGrpcLog);
  // What grpc_init does first (GRPC_VERBOSITY, else errors only): until it
  // has run, gpr_log logs nothing.
  gpr_log_verbosity_init();
}

}  // namespace halloc
