#include "proto/detail/field_plan.h"

#include <google/protobuf/timestamp.pb.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "proto/detail/pb.h"

namespace liaison::proto {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Reflection;

using PlanMap = std::unordered_map<const Descriptor*, std::unique_ptr<MessagePlan>>;

std::unique_ptr<MessagePlan> BuildPlan(const Descriptor* d) {
  auto plan = std::make_unique<MessagePlan>();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    FieldPlan p{f, FieldKind::kOther, FieldRule::kNone, f->is_repeated(), f->options().GetExtension(v1::data_category)};
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        p.kind = FieldKind::kString;
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
  return plan;
}

void AddClosure(const Descriptor* d, PlanMap* plans) {
  if (plans->count(d) != 0) return;
  (*plans)[d] = BuildPlan(d);
  for (int i = 0; i < d->field_count(); ++i) {
    if (const Descriptor* sub = d->field(i)->message_type()) AddClosure(sub, plans);
  }
}

// Every type a frame can contain, built once and then only read.
const PlanMap& WirePlans() {
  static const PlanMap* plans = [] {
    auto* m = new PlanMap();
    AddClosure(v1::Frame::descriptor(), m);
    AddClosure(v1::Message::descriptor(), m);
    return m;
  }();
  return *plans;
}

}  // namespace

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

void DiscardUnknownFields(google::protobuf::Message* message) {
  const Reflection* r = message->GetReflection();
  if (!r->GetUnknownFields(*message).empty()) r->MutableUnknownFields(message)->Clear();
  const MessagePlan& plan = PlanOf(message->GetDescriptor());
  if (!plan.has_sub_messages) return;
  for (const FieldPlan& p : plan.fields) {
    if (p.kind != FieldKind::kMessage && p.kind != FieldKind::kTimestamp) continue;
    if (p.repeated) {
      const int n = r->FieldSize(*message, p.field);
      for (int i = 0; i < n; ++i) DiscardUnknownFields(r->MutableRepeatedMessage(message, p.field, i));
    } else if (r->HasField(*message, p.field)) {
      DiscardUnknownFields(r->MutableMessage(message, p.field));
    }
  }
}

}  // namespace liaison::proto
