// Fuzz target: policy::RedactCopy against its definition. The first bytes
// choose obligations (categories and paths to redact or pseudonymise); the
// rest is a serialized Message. Whenever those bytes parse, the copy made
// from them, and the one made from the message serialized again (as the
// broker stores it), must be the definition's bytes: parse, ApplyObligations,
// the paths added to the envelope, serialize. Bytes that do not parse must
// not crash it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "policy/redact.h"
#include "proto/detail/pb.h"
#include "proto/names.h"

namespace {

using liaison::policy::Obligations;

// Every path obligations can name: each body type, its containers, leaves.
const std::vector<std::string>& Paths() {
  static const std::vector<std::string> paths = [] {
    std::set<std::string> out;
    for (const std::string& type : liaison::proto::MessageTypeNames()) {
      out.insert(type);
      for (const auto& [leaf, category] : liaison::policy::LeafPaths(type)) {
        for (size_t dot = leaf.find('.'); dot != std::string::npos; dot = leaf.find('.', dot + 1)) {
          out.insert(leaf.substr(0, dot));
        }
        out.insert(leaf);
      }
    }
    return std::vector<std::string>(out.begin(), out.end());
  }();
  return paths;
}

void Check(bool ok) {
  if (!ok) std::abort();
}

void Compare(const std::string& wire, const Obligations& o, const liaison::policy::PseudonymKey& key) {
  auto want = liaison::policy::RedactCopyByParsing(wire, o, &key);
  auto got = liaison::policy::RedactCopy(wire, o, &key);
  Check(want.ok() && got.ok());
  Check(got->wire == want->wire);
  Check(got->report.redacted_paths == want->report.redacted_paths);
  Check(got->report.pseudonymised_paths == want->report.pseudonymised_paths);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kHeader = 6;
  if (size < kHeader) return 0;
  static const liaison::policy::PseudonymKey key{"agr", 2, std::string(32, 'f')};
  // Byte 0 and 1: redacted and pseudonymised categories (bit i: category i);
  // bytes 2 to 5: two paths each way (an index into Paths(), 255: none).
  Obligations o;
  for (int c = 0; c < 8; ++c) {
    if (data[0] >> c & 1) o.redact_categories.insert(c);
    if (data[1] >> c & 1) o.pseudonymise_categories.insert(c);
  }
  const auto& paths = Paths();
  for (size_t i = 2; i < kHeader; ++i) {
    if (data[i] == 255) continue;
    (i < 4 ? o.redact_paths : o.pseudonymise_paths).insert(paths[data[i] % paths.size()]);
  }
  const std::string wire(reinterpret_cast<const char*>(data + kHeader), size - kHeader);
  liaison::v1::Message m;
  if (!m.ParseFromString(wire)) {
    (void)liaison::policy::RedactCopy(wire, o, &key);  // must not crash
    return 0;
  }
  Compare(wire, o, key);
  Compare(m.SerializeAsString(), o, key);
  return 0;
}
