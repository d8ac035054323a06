// Status and Result<T>: errors as values, in the LevelDB style. A Status is
// either OK (no allocation) or a code with a message; Result<T> holds a value
// or a non-OK Status. Both are plain values: safe to copy and move between
// threads, not synchronised.
#pragma once

#include <cassert>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace liaison {

class Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,   // bad input from a user, a file or the network
    kNotFound,
    kPermissionDenied,  // identity or policy says no
    kUnavailable,       // peer or resource not reachable now
    kTimeout,
    kIoError,
    kProtocolError,     // a peer broke the wire protocol
    kCorruption,
    kInternal,
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string_view m) { return {Code::kInvalidArgument, m}; }
  static Status NotFound(std::string_view m) { return {Code::kNotFound, m}; }
  static Status PermissionDenied(std::string_view m) { return {Code::kPermissionDenied, m}; }
  static Status Unavailable(std::string_view m) { return {Code::kUnavailable, m}; }
  static Status Timeout(std::string_view m) { return {Code::kTimeout, m}; }
  static Status IoError(std::string_view m) { return {Code::kIoError, m}; }
  static Status ProtocolError(std::string_view m) { return {Code::kProtocolError, m}; }
  static Status Corruption(std::string_view m) { return {Code::kCorruption, m}; }
  static Status Internal(std::string_view m) { return {Code::kInternal, m}; }

  bool ok() const { return rep_ == nullptr; }
  Code code() const { return rep_ ? rep_->code : Code::kOk; }
  const std::string& message() const;
  bool IsInvalidArgument() const { return code() == Code::kInvalidArgument; }
  bool IsNotFound() const { return code() == Code::kNotFound; }
  bool IsPermissionDenied() const { return code() == Code::kPermissionDenied; }
  bool IsUnavailable() const { return code() == Code::kUnavailable; }
  bool IsTimeout() const { return code() == Code::kTimeout; }
  bool IsIoError() const { return code() == Code::kIoError; }
  bool IsProtocolError() const { return code() == Code::kProtocolError; }
  bool IsCorruption() const { return code() == Code::kCorruption; }

  // "invalid argument: <message>", or "ok".
  std::string ToString() const;
  // Prefixes the message with context, keeping the code: "reading x: <message>".
  Status Annotate(std::string_view context) const;

 private:
  struct Rep {
    Code code;
    std::string message;
  };
  Status(Code code, std::string_view message)
      : rep_(std::make_shared<const Rep>(Rep{code, std::string(message)})) {}
  std::shared_ptr<const Rep> rep_;  // null when OK
};

const char* CodeName(Status::Code code);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}              // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {        // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "Result needs a value or an error");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace liaison
