// RedactCopy: a recipient's redacted copy of a stored message, made by a
// walk over its serialized bytes. Parsing the stored message, walking the
// parsed objects by reflection and serializing the copy again cost the
// broker about 14 µs a redacted delivery (docs/benchmarks.md, the
// twenty-fifth session); the walk copies the fields that stay as they are,
// leaves out the ones redacted and writes pseudonyms in place of the
// others. It follows only bytes exactly as the serializer writes them (the
// broker stores nothing else) and hands anything else to the parsing path,
// so the copy is the same, byte for byte, either way.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/wire_format_lite.h>

#include <deque>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "policy/detail/redact_rules.h"
#include "policy/redact.h"
#include "proto/detail/field_plan.h"
#include "proto/detail/pb.h"
#include "proto/detail/varint.h"
#include "proto/frame_codec.h"

namespace liaison::policy {
namespace {

using google::protobuf::FieldDescriptor;
using proto::FieldKind;
using proto::FieldPlan;
using proto::MessagePlan;
using proto::WireField;

constexpr unsigned kLengthDelimited = 2;

void PutBytes(std::string* out, uint32_t number, std::string_view bytes) {
  using WFL = google::protobuf::internal::WireFormatLite;
  proto::PutVarint(out, WFL::MakeTag(static_cast<int>(number), WFL::WIRETYPE_LENGTH_DELIMITED));
  proto::PutVarint(out, bytes.size());
  out->append(bytes);
}

const uint8_t* Begin(std::string_view s) {
  return reinterpret_cast<const uint8_t*>(s.data());
}
const uint8_t* End(std::string_view s) {
  return Begin(s) + s.size();
}

// ApplyObligations over serialized bytes, for the fields the serializer
// writes: each field once, in ascending number (a repeated field's elements
// together), so that the fields it keeps, copied in the order they come,
// are what serializing the redacted message writes. Any field it cannot
// place (an unknown number, a known one under another wire type, one out of
// order) ends the walk: the caller parses instead.
class WireRedactor {
 public:
  WireRedactor(const Obligations& o, const PseudonymKey* key) : o_(o), key_(key) {}

  // Appends to *out the fields of the message in [p, end), of the type plan
  // describes, with the obligations applied. path names the message; it is
  // extended and restored in place on the way down, as Redactor's is.
  bool Message(const uint8_t* p, const uint8_t* end, const MessagePlan& plan, std::string* path, bool pseudonymise_all,
               int depth, std::string* out) {
    if (depth > proto::kMaxNestingDepth) return false;
    uint32_t last = 0;
    WireField w;
    while (p < end) {
      const uint8_t* const start = p;
      if (!proto::ReadField(p, end, &w)) return false;
      const FieldPlan* f = plan.Find(static_cast<int>(w.number));
      if (f == nullptr || f->wire_type == proto::kAlwaysUnknown) return false;
      const bool packed = w.wire_type == kLengthDelimited && f->packable;
      if (w.wire_type != f->wire_type && !packed) return false;
      if (f->packable && packed != f->field->is_packed()) return false;
      // Ascending, a number again only for the next element of a repeated
      // field the serializer does not pack.
      if (w.number < last || (w.number == last && (!f->repeated || f->packable))) return false;
      last = w.number;
      const size_t parent_size = path->size();
      path->append(".").append(f->field->name());
      const bool ok = Field(start, p, w, *f, *path, pseudonymise_all, depth, out);
      path->resize(parent_size);
      if (!ok) return false;
    }
    return true;
  }

  RedactionReport Report() const {
    return RedactionReport{{redacted_.begin(), redacted_.end()}, {pseudonymised_.begin(), pseudonymised_.end()}};
  }

 private:
  // One occurrence of field f, the bytes [start, stop) (w read from them);
  // the same decisions as Redactor::ApplyField.
  bool Field(const uint8_t* start, const uint8_t* stop, const WireField& w, const FieldPlan& f, std::string& field_path,
             bool pseudonymise_all, int depth, std::string* out) {
    const bool leaf = f.kind != FieldKind::kMessage;
    // Unset to the parser, which would neither report nor write it.
    if (leaf && !f.repeated && !f.field->has_presence() && proto::HoldsDefault(w)) return false;
    if (detail::Covers(o_.redact_paths, field_path) || (leaf && o_.redact_categories.count(f.category) != 0)) {
      redacted_.insert(field_path);  // left out
      return true;
    }
    const bool pseudonymise = pseudonymise_all || detail::Covers(o_.pseudonymise_paths, field_path) ||
                              (leaf && o_.pseudonymise_categories.count(f.category) != 0);
    if (!leaf) {
      if (f.sub == nullptr) return false;
      // The sub-message's new bytes, then its tag and new length before them.
      std::string& sub = Scratch(depth);
      if (!Message(Begin(w.payload), End(w.payload), *f.sub, &field_path, pseudonymise, depth + 1, &sub)) {
        return false;
      }
      PutBytes(out, w.number, sub);
      return true;
    }
    if (!pseudonymise) return Keep(start, stop, w, f, out);
    if (f.field->type() != FieldDescriptor::TYPE_STRING) {
      redacted_.insert(field_path);  // a pseudonym of a number or an enum would be no secret
      return true;
    }
    pseudonymised_.insert(field_path);
    // A repeated field's empty element stays empty (Redactor skips it); a
    // singular field is on the wire only when set, even when empty.
    if (f.repeated && w.payload.empty()) return Keep(start, stop, w, f, out);
    PutBytes(out, w.number, Pseudonym(*key_, w.payload));
    return true;
  }

  // Copies a leaf field's bytes [start, stop) as they are, when they are
  // what the serializer would write for the value the parser reads.
  static bool Keep(const uint8_t* start, const uint8_t* stop, const WireField& w, const FieldPlan& f,
                   std::string* out) {
    if (static_cast<size_t>(stop - start) != proto::CanonicalSize(w)) return false;
    if (w.wire_type == 0 && !proto::CanonicalVarint(w.value, f)) return false;
    if (w.wire_type == kLengthDelimited) {
      if (f.packable && !proto::CanonicalPacked(w.payload, f)) return false;
      if (f.kind == FieldKind::kTimestamp && !proto::CanonicalTimestamp(w.payload)) return false;
    }
    out->append(reinterpret_cast<const char*>(start), static_cast<size_t>(stop - start));
    return true;
  }

  std::string& Scratch(int depth) {
    if (scratch_.size() <= static_cast<size_t>(depth)) scratch_.resize(static_cast<size_t>(depth) + 1);
    std::string& s = scratch_[static_cast<size_t>(depth)];
    s.clear();
    return s;
  }

  const Obligations& o_;
  const PseudonymKey* key_;
  std::set<std::string> redacted_;
  std::set<std::string> pseudonymised_;
  // One buffer per depth, reused. A deque: growing it for a deeper level
  // leaves the shallower levels' buffers, which callers are writing, where
  // they are.
  std::deque<std::string> scratch_;
};

// Where in an envelope's fields (the serializer's order) the new elements of
// field number go: before the first field with a higher number.
size_t InsertAt(std::string_view envelope, uint32_t number) {
  const uint8_t* p = Begin(envelope);
  const uint8_t* const end = End(envelope);
  WireField w;
  while (p < end) {
    const uint8_t* const start = p;
    if (!proto::ReadField(p, end, &w) || w.number > number) return static_cast<size_t>(start - Begin(envelope));
  }
  return envelope.size();
}

// The envelope with the report's paths added to redacted_paths and
// pseudonymised_paths, after the elements already there.
std::string EnvelopeWithPaths(std::string_view envelope, const RedactionReport& report) {
  constexpr uint32_t kRedacted = v1::Envelope::kRedactedPathsFieldNumber;
  constexpr uint32_t kPseudonymised = v1::Envelope::kPseudonymisedPathsFieldNumber;
  static_assert(kRedacted < kPseudonymised);
  const size_t at_redacted = InsertAt(envelope, kRedacted);
  const size_t at_pseudonymised = InsertAt(envelope, kPseudonymised);
  std::string out;
  out.reserve(envelope.size() + 64);
  out.append(envelope.substr(0, at_redacted));
  for (const std::string& p : report.redacted_paths) PutBytes(&out, kRedacted, p);
  out.append(envelope.substr(at_redacted, at_pseudonymised - at_redacted));
  for (const std::string& p : report.pseudonymised_paths) PutBytes(&out, kPseudonymised, p);
  out.append(envelope.substr(at_pseudonymised));
  return out;
}

// The copy made by the walk, or false when the bytes are not as the
// serializer writes a Message: the envelope first (holding nothing the
// parser would drop), one body member after it, and nothing else.
bool WalkCopy(std::string_view wire, const Obligations& o, const PseudonymKey* key, RedactedCopy* copy) {
  const uint8_t* p = Begin(wire);
  const uint8_t* const end = End(wire);
  WireField envelope, body;
  if (!proto::ReadField(p, end, &envelope) || envelope.number != v1::Message::kEnvelopeFieldNumber ||
      envelope.wire_type != kLengthDelimited) {
    return false;
  }
  // The envelope, through the same walk with nothing to apply: its fields
  // as they are, or false.
  static const Obligations kNone;
  std::string path = "envelope";
  std::string envelope_bytes;
  envelope_bytes.reserve(envelope.payload.size());
  if (!WireRedactor(kNone, nullptr)
           .Message(Begin(envelope.payload), End(envelope.payload), proto::PlanOf(v1::Envelope::descriptor()), &path,
                    false, 0, &envelope_bytes)) {
    return false;
  }
  if (!proto::ReadField(p, end, &body) || p != end || body.wire_type != kLengthDelimited) return false;
  const FieldDescriptor* member = v1::Message::descriptor()->FindFieldByNumber(static_cast<int>(body.number));
  static const auto* const body_oneof = v1::Message::descriptor()->FindOneofByName("body");
  if (member == nullptr || member->containing_oneof() != body_oneof) return false;
  WireRedactor walk(o, key);
  path = member->name();
  std::string body_bytes;
  body_bytes.reserve(body.payload.size());
  if (!walk.Message(Begin(body.payload), End(body.payload), proto::PlanOf(member->message_type()), &path, false, 0,
                    &body_bytes)) {
    return false;
  }
  copy->report = walk.Report();
  const std::string new_envelope = EnvelopeWithPaths(envelope_bytes, copy->report);
  copy->wire.clear();
  copy->wire.reserve(new_envelope.size() + body_bytes.size() + 12);
  PutBytes(&copy->wire, envelope.number, new_envelope);
  PutBytes(&copy->wire, body.number, body_bytes);
  copy->parsed = false;
  return true;
}

}  // namespace

Result<RedactedCopy> RedactCopy(std::string_view wire, const Obligations& o, const PseudonymKey* key) {
  if (Status s = detail::CheckPseudonymKey(o, key); !s.ok()) return s;
  RedactedCopy copy;
  if (WalkCopy(wire, o, key, &copy)) return copy;
  return RedactCopyByParsing(wire, o, key);
}

Result<RedactedCopy> RedactCopyByParsing(std::string_view wire, const Obligations& o, const PseudonymKey* key) {
  v1::Message message;
  if (!message.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) {
    return Status::InvalidArgument("the stored message does not parse as liaison.v1.Message");
  }
  auto report = ApplyObligations(&message, o, key);
  if (!report.ok()) return report.status();
  auto* env = message.mutable_envelope();
  for (const auto& p : report->redacted_paths) env->add_redacted_paths(p);
  for (const auto& p : report->pseudonymised_paths) env->add_pseudonymised_paths(p);
  RedactedCopy copy;
  copy.wire = message.SerializeAsString();
  copy.report = std::move(report).value();
  copy.parsed = true;
  return copy;
}

}  // namespace liaison::policy
