// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status and absl::StatusOr.
#ifndef HALLOC_CLIENTS_CPP_HALLOC_BASE_STATUS_MACROS_H_
#define HALLOC_CLIENTS_CPP_HALLOC_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HALLOC_CONCAT_INNER_(a, b) a##b
#define HALLOC_CONCAT_(a, b) HALLOC_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status halloc_status_ = (expr);          \
    if (!halloc_status_.ok()) return halloc_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates the StatusOr `expr`; on error
// returns its status, else moves the value into `lhs` (which may declare a
// variable: ASSIGN_OR_RETURN(auto fd, Open())).
#define ASSIGN_OR_RETURN(lhs, expr) \
  HALLOC_ASSIGN_OR_RETURN_IMPL_(HALLOC_CONCAT_(halloc_statusor_, __LINE__), lhs, expr)

#define HALLOC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // HALLOC_CLIENTS_CPP_HALLOC_BASE_STATUS_MACROS_H_
