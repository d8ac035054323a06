#include "proto/detail/field_plan.h"

#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/wire_format_lite.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "proto/detail/pb.h"
#include "proto/detail/varint.h"
#include "proto/frame_codec.h"

namespace liaison::proto {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Reflection;

using PlanMap = std::unordered_map<const Descriptor*, std::unique_ptr<MessagePlan>>;

// The wire type protobuf's generated parsers store f under (its elements'
// for a repeated field); any other goes to the unknown fields. A group's is
// start-group, which the scan never follows.
unsigned char WireTypeOf(const FieldDescriptor* f) {
  using WFL = google::protobuf::internal::WireFormatLite;
  if (f->is_map()) return kAlwaysUnknown;  // entries parse by rules of their own
  // proto2's enums are closed: an unknown value is kept as unknown.
  if (f->type() == FieldDescriptor::TYPE_ENUM && f->file()->syntax() != google::protobuf::FileDescriptor::SYNTAX_PROTO3) {
    return kAlwaysUnknown;
  }
  return static_cast<unsigned char>(WFL::WireTypeForFieldType(static_cast<WFL::FieldType>(f->type())));
}

// The largest field number MessagePlan::index_of covers.
constexpr int kMaxIndexedNumber = 1024;

std::unique_ptr<MessagePlan> BuildPlan(const Descriptor* d) {
  auto plan = std::make_unique<MessagePlan>();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    FieldPlan p{f,           FieldKind::kOther, FieldRule::kNone, f->is_repeated(),
                f->options().GetExtension(v1::data_category),      f->number(),
                WireTypeOf(f), f->is_packable()};
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        p.kind = FieldKind::kString;
        p.utf8 = f->type() == FieldDescriptor::TYPE_STRING &&
                 f->file()->syntax() == google::protobuf::FileDescriptor::SYNTAX_PROTO3;
        if (f->name() == "date_of_birth") p.rule = FieldRule::kDateOfBirth;
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        p.kind = FieldKind::kEnum;
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        p.kind = FieldKind::kDouble;
        if (f->name() == "latitude") p.rule = FieldRule::kLatitude;
        if (f->name() == "longitude") p.rule = FieldRule::kLongitude;
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        p.kind = f->message_type() == google::protobuf::Timestamp::descriptor() ? FieldKind::kTimestamp
                                                                                : FieldKind::kMessage;
        plan->has_sub_messages = true;
        break;
      default:
        break;
    }
    plan->fields.push_back(p);
  }
  std::sort(plan->fields.begin(), plan->fields.end(),
            [](const FieldPlan& a, const FieldPlan& b) { return a.field->number() < b.field->number(); });
  if (!plan->fields.empty() && plan->fields.back().number <= kMaxIndexedNumber) {
    plan->index_of.assign(static_cast<size_t>(plan->fields.back().number) + 1, -1);
    for (size_t i = 0; i < plan->fields.size(); ++i) {
      plan->index_of[static_cast<size_t>(plan->fields[i].number)] = static_cast<short>(i);
    }
  }
  return plan;
}

void AddClosure(const Descriptor* d, PlanMap* plans) {
  if (plans->count(d) != 0) return;
  (*plans)[d] = BuildPlan(d);
  for (int i = 0; i < d->field_count(); ++i) {
    if (const Descriptor* sub = d->field(i)->message_type()) AddClosure(sub, plans);
  }
}

// Every type a frame can contain, built once and then only read; each
// message field points at its type's plan.
const PlanMap& WirePlans() {
  static const PlanMap* plans = [] {
    auto* m = new PlanMap();
    AddClosure(v1::Frame::descriptor(), m);
    AddClosure(v1::Message::descriptor(), m);
    for (auto& [d, plan] : *m) {
      for (FieldPlan& p : plan->fields) {
        if (const Descriptor* sub = p.field->message_type()) p.sub = m->at(sub).get();
      }
    }
    return m;
  }();
  return *plans;
}

bool MayHoldUnknown(const uint8_t* p, const uint8_t* end, const MessagePlan& plan, int depth) {
  if (depth > kMaxNestingDepth) return true;
  WireField w;
  while (p < end) {
    if (!ReadField(p, end, &w)) return true;
    const FieldPlan* f = plan.Find(static_cast<int>(w.number));
    if (f == nullptr || (w.wire_type != f->wire_type && !(f->packable && w.wire_type == 2))) return true;
    if (w.wire_type == 2 && f->field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      const auto* sub = reinterpret_cast<const uint8_t*>(w.payload.data());
      if (f->sub == nullptr || MayHoldUnknown(sub, sub + w.payload.size(), *f->sub, depth + 1)) return true;
    }
  }
  return false;
}

}  // namespace

const FieldDescriptor* OnlyBodyMember(std::string_view wire, std::string_view* bytes) {
  static const google::protobuf::OneofDescriptor* const body = v1::Message::descriptor()->FindOneofByName("body");
  const FieldDescriptor* member = nullptr;
  const auto* p = reinterpret_cast<const uint8_t*>(wire.data());
  const uint8_t* end = p + wire.size();
  WireField f;
  while (p < end) {
    if (!ReadField(p, end, &f)) return nullptr;
    const FieldDescriptor* d = v1::Message::descriptor()->FindFieldByNumber(static_cast<int>(f.number));
    if (f.wire_type != 2 || d == nullptr || d->containing_oneof() != body) continue;
    if (member != nullptr) return nullptr;  // a second occurrence, of this member or another
    member = d;
    *bytes = f.payload;
  }
  return member;
}

const FieldPlan* MessagePlan::Find(int number) const {
  if (!index_of.empty()) {
    if (number < 0 || static_cast<size_t>(number) >= index_of.size()) return nullptr;
    const short i = index_of[static_cast<size_t>(number)];
    return i < 0 ? nullptr : &fields[static_cast<size_t>(i)];
  }
  auto it = std::lower_bound(fields.begin(), fields.end(), number,
                             [](const FieldPlan& p, int n) { return p.number < n; });
  return it != fields.end() && it->number == number ? &*it : nullptr;
}

size_t CanonicalSize(const WireField& w) {
  const size_t tag = VarintSize(static_cast<uint64_t>(w.number) << 3 | w.wire_type);
  switch (w.wire_type) {
    case 0: return tag + VarintSize(w.value);
    case 1: return tag + 8;
    case 5: return tag + 4;
    default: return tag + VarintSize(w.payload.size()) + w.payload.size();
  }
}

bool CanonicalVarint(uint64_t v, const FieldPlan& f) {
  switch (f.field->type()) {
    case FieldDescriptor::TYPE_INT32:
    case FieldDescriptor::TYPE_ENUM:
      return SignExtended32(v);
    case FieldDescriptor::TYPE_UINT32:
    case FieldDescriptor::TYPE_SINT32:
      return v <= 0xFFFFFFFFu;
    case FieldDescriptor::TYPE_BOOL:
      return v <= 1;
    default:
      return true;
  }
}

bool CanonicalPacked(std::string_view payload, const FieldPlan& f) {
  const auto* p = reinterpret_cast<const uint8_t*>(payload.data());
  const uint8_t* const end = p + payload.size();
  if (p == end) return false;
  uint64_t v = 0;
  while (p < end) {
    const uint8_t* const at = p;
    if (!ReadValue(p, end, f.wire_type, &v)) return false;
    if (f.wire_type == 0 && (static_cast<size_t>(p - at) != VarintSize(v) || !CanonicalVarint(v, f))) return false;
  }
  return true;
}

bool CanonicalTimestamp(std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint8_t* const end = p + bytes.size();
  uint32_t last = 0;
  WireField w;
  while (p < end) {
    const uint8_t* const start = p;
    if (!ReadField(p, end, &w) || w.wire_type != 0 || w.number <= last || w.number > 2 || w.value == 0 ||
        static_cast<size_t>(p - start) != CanonicalSize(w) || (w.number == 2 && !SignExtended32(w.value))) {
      return false;
    }
    last = w.number;
  }
  return true;
}

bool MayHoldUnknownFields(std::string_view wire, const Descriptor* d) {
  const PlanMap& wire_plans = WirePlans();
  auto it = wire_plans.find(d);
  if (it == wire_plans.end()) return true;
  const auto* p = reinterpret_cast<const uint8_t*>(wire.data());
  return MayHoldUnknown(p, p + wire.size(), *it->second, 0);
}

const MessagePlan& PlanOf(const Descriptor* d) {
  const PlanMap& wire = WirePlans();
  if (auto it = wire.find(d); it != wire.end()) return *it->second;
  // Types outside the wire protocol (none of the broker's walks meets one).
  static std::mutex mu;
  static PlanMap* others = new PlanMap();
  std::lock_guard lock(mu);
  auto& slot = (*others)[d];
  if (!slot) slot = BuildPlan(d);
  return *slot;
}

namespace {

void Discard(google::protobuf::Message* message, const MessagePlan& plan) {
  const Reflection* r = message->GetReflection();
  if (!r->GetUnknownFields(*message).empty()) r->MutableUnknownFields(message)->Clear();
  if (!plan.has_sub_messages) return;
  for (const FieldPlan& p : plan.fields) {
    if (p.kind != FieldKind::kMessage && p.kind != FieldKind::kTimestamp) continue;
    auto each = [&p](google::protobuf::Message* sub) { Discard(sub, p.sub ? *p.sub : PlanOf(sub->GetDescriptor())); };
    if (p.repeated) {
      const int n = r->FieldSize(*message, p.field);
      for (int i = 0; i < n; ++i) each(r->MutableRepeatedMessage(message, p.field, i));
    } else if (r->HasField(*message, p.field)) {
      each(r->MutableMessage(message, p.field));
    }
  }
}

}  // namespace

void DiscardUnknownFields(google::protobuf::Message* message) { Discard(message, PlanOf(message->GetDescriptor())); }

}  // namespace liaison::proto
