// Fuzz target: a message written by hand as JSON, as `liaison send` reads it.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "proto/detail/pb.h"
#include "proto/message_json.h"
#include "proto/validate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  liaison::v1::Message m;
  if (!liaison::proto::FromJson(std::string_view(reinterpret_cast<const char*>(data), size), &m).ok()) return 0;
  (void)liaison::proto::ValidateForPublish(&m, liaison::proto::MessageLimits{}, std::chrono::system_clock::now());
  (void)liaison::proto::ToJson(m, true);
  return 0;
}
