// Fuzz target: what the audit export reader parses: leaf bytes and
// checkpoint text. A leaf that decodes must encode back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/audit_record.h"
#include "common/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = liaison::audit::DecodeLeaf(in);
  if (r.ok() && liaison::audit::EncodeLeaf(*r) != in) std::abort();  // leaves are canonical
  auto c = liaison::audit::ParseCheckpoint(in);
  if (c.ok()) (void)liaison::audit::FormatCheckpoint(*c);
  return 0;
}
