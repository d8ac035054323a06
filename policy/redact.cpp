#include "policy/redact.h"

#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>
#include <unistr.h>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <set>
#include <stdexcept>

#include "common/sha256.h"
#include "policy/detail/redact_rules.h"
#include "proto/detail/field_plan.h"
#include "proto/detail/pb.h"

namespace liaison::policy {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Reflection;
using detail::Covers;

constexpr size_t kKeyBytes = 32;
constexpr size_t kPseudonymBytes = 16;
// Guards LeafPaths against a recursive message type (there is none today).
constexpr int kMaxDepth = 16;

// A field whose value is data in its own right, carrying its own category:
// a scalar, enum, string or bytes (repeated or not), a map, or a Timestamp.
// Other message fields are containers; their fields carry the categories.
// (The same definition as tests/proto/schema_annotation_test.cpp.)
bool IsLeaf(const FieldDescriptor* f) {
  if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) return true;
  if (f->is_map()) return true;
  return f->message_type() == google::protobuf::Timestamp::descriptor();
}

int CategoryOf(const FieldDescriptor* f) { return f->options().GetExtension(v1::data_category); }

const FieldDescriptor* BodyField(std::string_view name) {
  const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  for (int i = 0; i < oneof->field_count(); ++i) {
    if (oneof->field(i)->name() == name) return oneof->field(i);
  }
  return nullptr;
}

bool IsSet(const google::protobuf::Message& m, const proto::FieldPlan& p) {
  const Reflection* r = m.GetReflection();
  return p.repeated ? r->FieldSize(m, p.field) > 0 : r->HasField(m, p.field);
}

class Redactor {
 public:
  Redactor(const Obligations& o, const PseudonymKey* key) : o_(o), key_(key) {}

  // Applies the obligations to every field of m; path names m (and is
  // extended and restored in place while the walk goes down).
  void Apply(google::protobuf::Message* m, std::string* path, bool pseudonymise_all) {
    const Reflection* r = m->GetReflection();
    for (const proto::FieldPlan& p : proto::PlanOf(m->GetDescriptor()).fields) {
      if (!IsSet(*m, p)) continue;
      const FieldDescriptor* f = p.field;
      const size_t parent_size = path->size();
      path->append(".").append(f->name());
      ApplyField(m, r, p, *path, pseudonymise_all);
      path->resize(parent_size);
    }
  }

 private:
  void ApplyField(google::protobuf::Message* m, const Reflection* r, const proto::FieldPlan& p,
                  std::string& field_path, bool pseudonymise_all) {
    const FieldDescriptor* f = p.field;
    const bool leaf = p.kind != proto::FieldKind::kMessage;
    if (Covers(o_.redact_paths, field_path) || (leaf && o_.redact_categories.count(p.category) != 0)) {
      r->ClearField(m, f);
      redacted_.insert(field_path);
      return;
    }
    const bool pseudonymise = pseudonymise_all || Covers(o_.pseudonymise_paths, field_path) ||
                              (leaf && o_.pseudonymise_categories.count(p.category) != 0);
    if (!leaf) {
      if (p.repeated) {
        const int n = r->FieldSize(*m, f);
        for (int j = 0; j < n; ++j) Apply(r->MutableRepeatedMessage(m, f, j), &field_path, pseudonymise);
      } else {
        Apply(r->MutableMessage(m, f), &field_path, pseudonymise);
      }
      return;
    }
    if (!pseudonymise) return;
    if (f->type() != FieldDescriptor::TYPE_STRING) {
      // A pseudonym of an enum or a number would be a lookup table away
      // from its value (few distinct values); remove it instead.
      r->ClearField(m, f);
      redacted_.insert(field_path);
      return;
    }
    if (p.repeated) {
      const int n = r->FieldSize(*m, f);
      for (int j = 0; j < n; ++j) {
        const std::string value = r->GetRepeatedString(*m, f, j);
        if (!value.empty()) r->SetRepeatedString(m, f, j, Pseudonym(*key_, value));
      }
    } else {
      r->SetString(m, f, Pseudonym(*key_, r->GetString(*m, f)));
    }
    pseudonymised_.insert(field_path);
  }

 public:
  RedactionReport Report() const {
    return RedactionReport{{redacted_.begin(), redacted_.end()},
                           {pseudonymised_.begin(), pseudonymised_.end()}};
  }

 private:
  const Obligations& o_;
  const PseudonymKey* key_;
  std::set<std::string> redacted_;
  std::set<std::string> pseudonymised_;
};

void CollectLeaves(const Descriptor* d, const std::string& path, int depth,
                   std::vector<std::pair<std::string, int>>* out) {
  if (depth > kMaxDepth) return;
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string field_path = path + "." + f->name();
    if (IsLeaf(f)) {
      out->emplace_back(field_path, CategoryOf(f));
    } else {
      CollectLeaves(f->message_type(), field_path, depth + 1, out);
    }
  }
}

bool IsAsciiSpace(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// Normalise() for input that is not valid UTF-8: bytes stay bytes.
std::string NormaliseBytes(std::string_view value) {
  std::string out;
  bool pending_space = false;
  for (const char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsAsciiSpace(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : ch);
  }
  return out;
}

// Collapses runs of White_Space in valid UTF-8.
std::string CollapseWhiteSpace(const uint8_t* s, size_t n) {
  std::string out;
  out.reserve(n);
  bool pending_space = false;
  size_t i = 0;
  while (i < n) {
    ucs4_t uc = 0;
    const int len = u8_mbtouc(&uc, s + i, n - i);
    const size_t step = len > 0 ? static_cast<size_t>(len) : 1;
    if (uc_is_property_white_space(uc)) {
      pending_space = !out.empty();
    } else {
      if (pending_space) out.push_back(' ');
      pending_space = false;
      out.append(reinterpret_cast<const char*>(s + i), step);
    }
    i += step;
  }
  return out;
}

}  // namespace

Status detail::CheckPseudonymKey(const Obligations& o, const PseudonymKey* key) {
  const bool pseudonymises = !o.pseudonymise_categories.empty() || !o.pseudonymise_paths.empty();
  if (pseudonymises && key == nullptr) {
    return Status::Internal("pseudonymisation required but no pseudonym key given");
  }
  if (pseudonymises && key->key.size() != kKeyBytes) {
    return Status::Internal("pseudonym key for agreement '" + key->agreement + "' version " +
                            std::to_string(key->version) + " is not " +
                            std::to_string(kKeyBytes) + " bytes");
  }
  return Status::Ok();
}

Result<RedactionReport> ApplyObligations(v1::Message* message, const Obligations& o,
                                         const PseudonymKey* key) {
  if (Status s = detail::CheckPseudonymKey(o, key); !s.ok()) return s;
  // Past the checks above nothing fails: the message is changed in place
  // (a copy to change and swap in cost as much as the redaction itself).
  proto::DiscardUnknownFields(message);
  Redactor redactor(o, key);
  static const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  if (const FieldDescriptor* body = message->GetReflection()->GetOneofFieldDescriptor(*message, oneof)) {
    std::string path = body->name();
    redactor.Apply(message->GetReflection()->MutableMessage(message, body), &path, false);
  }
  return redactor.Report();
}

bool IsValidBodyPath(std::string_view path) {
  const size_t first_dot = path.find('.');
  const FieldDescriptor* body = BodyField(path.substr(0, first_dot));
  if (body == nullptr) return false;
  if (first_dot == std::string_view::npos) return true;
  const Descriptor* d = body->message_type();
  std::string_view rest = path.substr(first_dot + 1);
  while (true) {
    if (d == nullptr) return false;  // a leaf has no sub-fields
    const size_t dot = rest.find('.');
    const std::string_view name = rest.substr(0, dot);
    if (name.empty()) return false;
    const FieldDescriptor* f = d->FindFieldByName(std::string(name));
    if (f == nullptr) return false;
    if (dot == std::string_view::npos) return true;
    d = IsLeaf(f) ? nullptr : f->message_type();
    rest = rest.substr(dot + 1);
  }
}

std::vector<std::pair<std::string, int>> LeafPaths(std::string_view message_type) {
  std::vector<std::pair<std::string, int>> out;
  if (const FieldDescriptor* body = BodyField(message_type)) {
    CollectLeaves(body->message_type(), body->name(), 0, &out);
  }
  return out;
}

std::string Pseudonym(const PseudonymKey& key, std::string_view value) {
  const std::string normal = Normalise(value);
  // The keyed state is built once per key and thread: a copy of a message
  // pseudonymises many fields under the same key.
  thread_local std::string cached_key;
  thread_local std::unique_ptr<crypto::HmacSha256> mac;
  if (!mac || cached_key != key.key) {
    mac = std::make_unique<crypto::HmacSha256>(key.key);
    cached_key = key.key;
  }
  // HMAC-SHA256 fails only when OpenSSL itself is broken: Mac() throws then,
  // and the value never passes through in clear.
  const crypto::Digest d = mac->Mac(normal);
  static_assert(kPseudonymBytes <= std::tuple_size_v<crypto::Digest>);
  return "ps:v" + std::to_string(key.version) + ":" + crypto::Hex(d.data(), kPseudonymBytes);
}

std::string Normalise(std::string_view value) {
  if (value.empty()) return {};
  // ASCII (most names, ids and addresses): case folding is lower-casing
  // A-Z, NFC changes nothing and the White_Space characters are the six
  // ASCII ones, which is exactly what NormaliseBytes does, without
  // libunistring's conversions.
  if (std::all_of(value.begin(), value.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return NormaliseBytes(value);
  }
  const auto* s = reinterpret_cast<const uint8_t*>(value.data());
  if (u8_check(s, value.size()) != nullptr) return NormaliseBytes(value);
  size_t len = 0;
  uint8_t* folded = u8_casefold(s, value.size(), nullptr, UNINORM_NFC, nullptr, &len);
  if (folded == nullptr) throw std::bad_alloc();  // the only documented failure: ENOMEM
  std::string out = CollapseWhiteSpace(folded, len);
  std::free(folded);
  return out;
}

}  // namespace liaison::policy
