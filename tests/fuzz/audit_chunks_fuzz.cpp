// Fuzz target: an audit chunk's row as the store reads it
// (broker/store/audit_chunks.h): n, and the times, hashes and leaves blobs,
// cut from the input at two 16-bit lengths. A chunk that decodes must encode
// back to the same blobs; anything else is refused, never read past.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "broker/store/audit_chunks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const int64_t n = static_cast<int8_t>(data[0]);  // negative and zero too
  size_t times_len = data[1] | (data[2] << 8), hashes_len = data[3] | (data[4] << 8);
  std::string_view rest(reinterpret_cast<const char*>(data) + 5, size - 5);
  times_len = times_len % (rest.size() + 1);
  const std::string_view times = rest.substr(0, times_len);
  rest.remove_prefix(times_len);
  hashes_len = hashes_len % (rest.size() + 1);
  const std::string_view hashes = rest.substr(0, hashes_len);
  const std::string_view leaves = rest.substr(hashes_len);
  using namespace liaison::broker::audit_chunks;
  std::vector<Entry> entries;
  const bool head = Decode(1, n, times, hashes, nullptr, &entries).ok();
  const bool all = Decode(1, n, times, hashes, &leaves, &entries).ok();
  if (all && !head) std::abort();  // leaves are checked after times and hashes, never instead
  if (all) {
    if (entries.size() != static_cast<size_t>(n)) std::abort();
    Blobs b;
    Encode(entries, &b);
    if (b.times != times || b.hashes != hashes || b.leaves != leaves) std::abort();
  }
  return 0;
}
