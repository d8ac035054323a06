// Fuzz target: what the audit verifier parses: leaf bytes (of a store, or of
// an export of an earlier version) and checkpoint text. A leaf that decodes
// must encode back to the same bytes, from a Record and from a RecordView.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/audit_record.h"
#include "common/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = liaison::audit::DecodeLeaf(in);
  if (r.ok() && liaison::audit::EncodeLeaf(*r) != in) std::abort();  // leaves are canonical
  // The verifier encodes exports' columns with EncodeLeafView: the fields
  // of any leaf encode back to it, and anything else is refused.
  liaison::audit::RecordView v;
  const char* why = nullptr;
  if (liaison::audit::DecodeLeafView(in, &v, &why)) {
    std::string buffer;
    std::string_view encoded;
    if (!liaison::audit::EncodeLeafView(v, &buffer, &encoded, &why) || encoded != in) std::abort();
  }
  auto c = liaison::audit::ParseCheckpoint(in);
  if (c.ok()) (void)liaison::audit::FormatCheckpoint(*c);
  return 0;
}
