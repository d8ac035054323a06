// Fuzz target: a commit log entry's payload as the store reads it back at
// start (broker/store/log_group.h). The log's CRC guards it, but a damaged
// or hand-made file must still be refused cleanly, never crash or allocate
// what a count claims. Whatever decodes encodes, and that encoding decodes
// to the same encoding again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "broker/store/log_group.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  auto g = liaison::broker::DecodeLogGroup(in);
  if (!g.ok()) {
    if (!g.status().IsCorruption()) std::abort();
    return 0;
  }
  std::string once;
  liaison::broker::EncodeLogGroup(*g, &once);
  auto again = liaison::broker::DecodeLogGroup(once);
  if (!again.ok()) std::abort();
  std::string twice;
  liaison::broker::EncodeLogGroup(*again, &twice);
  if (twice != once) std::abort();
  return 0;
}
