#include "common/audit_record.h"

#include <algorithm>
#include <cstring>

namespace liaison::audit {
namespace {

// Big-endian, into a buffer already sized for it (EncodeLeaf is on the
// store writer's path for every record: one allocation, no growth;
// EncodeLeafView on the verifier's, into a buffer it reuses).
char* PutU64(char* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) *out++ = static_cast<char>((v >> (8 * i)) & 0xFF);
  return out;
}

char* PutString(char* out, std::string_view s) {
  const uint32_t n = static_cast<uint32_t>(s.size());
  for (int i = 3; i >= 0; --i) *out++ = static_cast<char>((n >> (8 * i)) & 0xFF);
  if (n > 0) std::memcpy(out, s.data(), n);
  return out + n;
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool U64(uint64_t* v) {
    if (in_.size() < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v = (*v << 8) | static_cast<uint8_t>(in_[i]);
    in_.remove_prefix(8);
    return true;
  }
  bool String(std::string_view* s) {
    if (in_.size() < 4) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<uint8_t>(in_[i]);
    in_.remove_prefix(4);
    if (in_.size() < n) return false;
    *s = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool empty() const { return in_.empty(); }

 private:
  std::string_view in_;
};

// The size of the leaf of these strings.
size_t LeafSize(const std::string_view (&strings)[RecordView::kStrings]) {
  size_t size = 1 + 3 * 8;
  for (std::string_view s : strings) size += 4 + s.size();
  return size;
}

// The leaf, into p (LeafSize bytes of room).
void WriteLeaf(char* p, uint64_t seq, int64_t time_ms, int64_t tlp,
               const std::string_view (&strings)[RecordView::kStrings]) {
  *p++ = static_cast<char>(kLeafVersion);
  p = PutU64(p, seq);
  p = PutU64(p, static_cast<uint64_t>(time_ms));
  p = PutU64(p, static_cast<uint64_t>(tlp));
  for (std::string_view s : strings) p = PutString(p, s);
}

}  // namespace

std::string EncodeLeaf(const Record& r) {
  const std::string_view strings[RecordView::kStrings] = {
      r.event,   r.actor,    r.cert_sha256, r.message_id,     r.case_id,     r.sender,    r.recipient, r.message_type,
      r.purpose, r.decision, r.rules,       r.policy_version, r.obligations, r.body_hmac, r.detail};
  std::string out(LeafSize(strings), '\0');
  WriteLeaf(out.data(), r.seq, r.time_ms, r.tlp, strings);
  return out;
}

bool EncodeLeafView(const RecordView& v, std::string* buffer, std::string_view* leaf, const char** why) {
  // What DecodeLeafView refuses is never encoded: the encoding stays
  // canonical, so fields that hash right are the fields that were signed.
  if (v.tlp < 0 || v.tlp > 0x7fffffff) {
    *why = "audit record has an out-of-range TLP value";
    return false;
  }
  for (std::string_view s : v.strings) {
    if (s.size() > 0xffffffffu) {
      *why = "audit record has a field too long for a leaf";
      return false;
    }
  }
  const size_t size = LeafSize(v.strings);
  if (buffer->size() < size) buffer->resize(std::max(size, 2 * buffer->size()));
  WriteLeaf(buffer->data(), v.seq, v.time_ms, v.tlp, v.strings);
  *leaf = std::string_view(buffer->data(), size);
  return true;
}

bool DecodeLeafView(std::string_view leaf, RecordView* r, const char** why) {
  if (leaf.empty() || static_cast<uint8_t>(leaf[0]) != kLeafVersion) {
    *why = "not a version-1 audit leaf";
    return false;
  }
  Reader in(leaf.substr(1));
  uint64_t time = 0, tlp = 0;
  bool ok = in.U64(&r->seq) && in.U64(&time) && in.U64(&tlp);
  for (int i = 0; i < RecordView::kStrings && ok; ++i) ok = in.String(&r->strings[i]);
  if (!ok || !in.empty()) {
    *why = "audit leaf is truncated or has trailing bytes";
    return false;
  }
  // Leaves are canonical: a value that would not encode back the same is bad.
  if (tlp > 0x7fffffff) {
    *why = "audit leaf has an out-of-range TLP value";
    return false;
  }
  r->time_ms = static_cast<int64_t>(time);
  r->tlp = static_cast<int64_t>(tlp);
  return true;
}

Result<Record> DecodeLeaf(std::string_view leaf) {
  RecordView v;
  const char* why = nullptr;
  if (!DecodeLeafView(leaf, &v, &why)) return Status::Corruption(why);
  Record r;
  r.seq = v.seq;
  r.time_ms = v.time_ms;
  r.tlp = static_cast<int>(v.tlp);  // in range: checked by DecodeLeafView
  int i = 0;
  for (std::string* s : {&r.event, &r.actor, &r.cert_sha256, &r.message_id, &r.case_id, &r.sender, &r.recipient,
                         &r.message_type, &r.purpose, &r.decision, &r.rules, &r.policy_version, &r.obligations,
                         &r.body_hmac, &r.detail}) {
    s->assign(v.strings[i++]);
  }
  return r;
}

}  // namespace liaison::audit
