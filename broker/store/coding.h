// Little-endian fixed-width integers, as the commit log's entry headers
// hold them (commit_log.h), for the log and for tools and tests that write
// or read its files. Plain functions: no state, any thread.
#pragma once

#include <cstdint>
#include <string>

namespace liaison::broker::coding {

inline void PutFixed32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void PutFixed64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void AppendFixed32(std::string* out, uint32_t v) {
  char b[4];
  PutFixed32(b, v);
  out->append(b, sizeof b);
}
inline void AppendFixed64(std::string* out, uint64_t v) {
  char b[8];
  PutFixed64(b, v);
  out->append(b, sizeof b);
}
inline uint32_t GetFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}
inline uint64_t GetFixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

}  // namespace liaison::broker::coding
