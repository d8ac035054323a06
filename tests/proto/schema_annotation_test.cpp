// The schema walk: every leaf field of every liaison.v1 message must carry a
// (liaison.v1.data_category) other than CAT_UNSPECIFIED, because the policy
// engine redacts and pseudonymises by category and an unannotated field
// would pass through unclassified. Also pins the enums the specification
// names (ODIHR bias motivations, TLP 2.0 labels, frame kinds).
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/duration.pb.h>
#include <google/protobuf/timestamp.pb.h>

#include <catch2/catch.hpp>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "proto/detail/pb.h"

namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;
namespace v1 = liaison::v1;

constexpr const char* kTimestamp = "google.protobuf.Timestamp";

// A field whose value is data in its own right: a scalar, enum, string or
// bytes (repeated or not), a map, or a Timestamp. Other message fields are
// containers whose own fields are checked.
bool IsLeaf(const FieldDescriptor* f) {
  if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) return true;
  if (f->is_map()) return true;
  return f->message_type()->full_name() == kTimestamp;
}

struct WalkResult {
  std::vector<std::string> offenders;  // "full.field.name: why"
  std::set<std::string> messages;      // every message type visited
  int leaves = 0;
};

void WalkMessage(const Descriptor* d, WalkResult* out) {
  out->messages.insert(d->full_name());
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (!IsLeaf(f)) continue;
    ++out->leaves;
    if (!f->options().HasExtension(v1::data_category)) {
      out->offenders.push_back(f->full_name() + ": no (liaison.v1.data_category)");
    } else if (f->options().GetExtension(v1::data_category) == v1::CAT_UNSPECIFIED) {
      out->offenders.push_back(f->full_name() + ": (liaison.v1.data_category) is CAT_UNSPECIFIED");
    }
  }
  for (int i = 0; i < d->nested_type_count(); ++i) {
    const Descriptor* nested = d->nested_type(i);
    if (nested->options().map_entry()) continue;  // its key/value are covered by the map field
    WalkMessage(nested, out);
  }
}

WalkResult WalkFile(const FileDescriptor* file) {
  WalkResult out;
  for (int i = 0; i < file->message_type_count(); ++i) WalkMessage(file->message_type(i), &out);
  return out;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += "\n  " + l;
  return s;
}

std::vector<const FileDescriptor*> LiaisonFiles() {
  return {v1::Message::descriptor()->file(), v1::Frame::descriptor()->file()};
}

}  // namespace

TEST_CASE("every leaf field of liaison.v1 carries a data category", "[proto][schema]") {
  std::vector<std::string> offenders;
  std::set<std::string> messages;
  int leaves = 0;
  for (const FileDescriptor* file : LiaisonFiles()) {
    WalkResult r = WalkFile(file);
    offenders.insert(offenders.end(), r.offenders.begin(), r.offenders.end());
    messages.insert(r.messages.begin(), r.messages.end());
    leaves += r.leaves;
  }
  INFO("fields without a data category:" << Join(offenders));
  CHECK(offenders.empty());

  // The walk really covered both files (guards against a walker that visits
  // nothing and so finds nothing).
  for (const char* name :
       {"liaison.v1.Envelope", "liaison.v1.Message", "liaison.v1.IncidentReport", "liaison.v1.PersonInvolved",
        "liaison.v1.CaseReferral", "liaison.v1.Concern", "liaison.v1.CaseUpdate", "liaison.v1.Contact",
        "liaison.v1.Location", "liaison.v1.Frame", "liaison.v1.Hello", "liaison.v1.Welcome", "liaison.v1.PublishAck",
        "liaison.v1.RecipientOutcome", "liaison.v1.Error"}) {
    CHECK(messages.count(name) == 1);
  }
  CHECK(leaves > 100);
}

TEST_CASE("no liaison.v1 field hides leaves behind a foreign message type", "[proto][schema]") {
  // The walk treats message fields as containers and checks their fields;
  // that only works for our own messages. A field of another package's
  // message type (Duration, Struct, Any, ...) would carry data nobody
  // classified, so only Timestamp (a leaf) is allowed from outside.
  std::vector<std::string> offenders;
  int containers = 0;
  std::function<void(const Descriptor*)> visit = [&](const Descriptor* d) {
    for (int j = 0; j < d->field_count(); ++j) {
      const FieldDescriptor* f = d->field(j);
      if (IsLeaf(f)) continue;
      ++containers;
      const std::string& type = f->message_type()->full_name();
      if (f->message_type()->file()->package() != "liaison.v1") {
        offenders.push_back(f->full_name() + " is a " + type);
      }
    }
    for (int i = 0; i < d->nested_type_count(); ++i) visit(d->nested_type(i));
  };
  for (const FileDescriptor* file : LiaisonFiles()) {
    for (int i = 0; i < file->message_type_count(); ++i) visit(file->message_type(i));
  }
  INFO(Join(offenders));
  CHECK(offenders.empty());
  CHECK(containers >= 10);  // Message.envelope, IncidentReport.location, Frame.hello, ...
}

TEST_CASE("the schema walker reports fields without a category", "[proto][schema]") {
  SECTION("a schema built in the test, with annotated and unannotated fields") {
    google::protobuf::FileDescriptorProto file;
    file.set_name("walker_probe.proto");
    file.set_package("probe");
    file.set_syntax("proto3");
    file.add_dependency("google/protobuf/timestamp.proto");
    file.add_dependency("liaison/v1/options.proto");
    auto* probe = file.add_message_type();
    probe->set_name("Probe");
    auto add = [](google::protobuf::DescriptorProto* m, const char* name, int number,
                  google::protobuf::FieldDescriptorProto::Type type, const char* type_name, int category,
                  bool repeated = false) {
      auto* f = m->add_field();
      f->set_name(name);
      f->set_number(number);
      f->set_type(type);
      f->set_label(repeated ? google::protobuf::FieldDescriptorProto::LABEL_REPEATED
                            : google::protobuf::FieldDescriptorProto::LABEL_OPTIONAL);
      if (type_name) f->set_type_name(type_name);
      if (category >= 0) {
        f->mutable_options()->SetExtension(v1::data_category, static_cast<v1::DataCategory>(category));
      }
    };
    using T = google::protobuf::FieldDescriptorProto;
    add(probe, "annotated", 1, T::TYPE_STRING, nullptr, v1::CAT_PERSONAL);
    add(probe, "missing", 2, T::TYPE_STRING, nullptr, -1);
    add(probe, "when", 3, T::TYPE_MESSAGE, ".google.protobuf.Timestamp", -1);
    add(probe, "when_ok", 4, T::TYPE_MESSAGE, ".google.protobuf.Timestamp", v1::CAT_NOT_PERSONAL);
    add(probe, "inner", 5, T::TYPE_MESSAGE, ".probe.Probe.Inner", -1);  // a container: fine
    add(probe, "numbers", 6, T::TYPE_INT32, nullptr, v1::CAT_UNSPECIFIED, true);
    add(probe, "kind", 7, T::TYPE_ENUM, ".probe.Probe.Kind", -1);
    auto* inner = probe->add_nested_type();
    inner->set_name("Inner");
    add(inner, "deep", 1, T::TYPE_UINT64, nullptr, -1);
    add(inner, "fine", 2, T::TYPE_DOUBLE, nullptr, v1::CAT_FREE_TEXT);
    auto* kind = probe->add_enum_type();
    kind->set_name("Kind");
    auto* zero = kind->add_value();
    zero->set_name("KIND_UNSPECIFIED");
    zero->set_number(0);

    google::protobuf::DescriptorPool pool(google::protobuf::DescriptorPool::generated_pool());
    const FileDescriptor* built = pool.BuildFile(file);
    REQUIRE(built != nullptr);
    WalkResult r = WalkFile(built);
    INFO(Join(r.offenders));
    const std::vector<std::string> expected = {
        "probe.Probe.missing: no (liaison.v1.data_category)",
        "probe.Probe.when: no (liaison.v1.data_category)",
        "probe.Probe.numbers: (liaison.v1.data_category) is CAT_UNSPECIFIED",
        "probe.Probe.kind: no (liaison.v1.data_category)",
        "probe.Probe.Inner.deep: no (liaison.v1.data_category)",
    };
    CHECK(r.offenders == expected);
    CHECK(r.leaves == 8);
    CHECK(r.messages == std::set<std::string>{"probe.Probe", "probe.Probe.Inner"});
  }
  SECTION("google.protobuf.Duration, which knows nothing of our categories") {
    WalkResult r = WalkFile(google::protobuf::Duration::descriptor()->file());
    const std::vector<std::string> expected = {
        "google.protobuf.Duration.seconds: no (liaison.v1.data_category)",
        "google.protobuf.Duration.nanos: no (liaison.v1.data_category)",
    };
    CHECK(r.offenders == expected);
  }
}

TEST_CASE("BiasMotivation has the nine OSCE/ODIHR categories", "[proto][schema]") {
  const auto* e = v1::BiasMotivation_descriptor();
  const std::vector<std::string> odihr = {
      "BIAS_RACIST_XENOPHOBIC", "BIAS_ANTI_ROMA",      "BIAS_ANTISEMITIC",
      "BIAS_ANTI_MUSLIM",       "BIAS_ANTI_CHRISTIAN", "BIAS_OTHER_RELIGION_OR_BELIEF",
      "BIAS_GENDER_BASED",      "BIAS_ANTI_LGBTI",     "BIAS_DISABILITY"};
  for (const auto& name : odihr) {
    CAPTURE(name);
    const auto* v = e->FindValueByName(name);
    REQUIRE(v != nullptr);
    CHECK(v->number() != 0);
  }
  REQUIRE(e->FindValueByNumber(0) != nullptr);
  CHECK(e->FindValueByNumber(0)->name() == "BIAS_UNSPECIFIED");
  CHECK(e->value_count() == 10);  // the nine, plus the proto3 zero value
}

TEST_CASE("Tlp has the TLP 2.0 labels, least to most restrictive", "[proto][schema]") {
  const auto* e = v1::Tlp_descriptor();
  const std::vector<std::string> labels = {"TLP_CLEAR", "TLP_GREEN", "TLP_AMBER", "TLP_AMBER_STRICT", "TLP_RED"};
  int previous = 0;
  for (const auto& name : labels) {
    CAPTURE(name);
    const auto* v = e->FindValueByName(name);
    REQUIRE(v != nullptr);
    CHECK(v->number() > previous);
    previous = v->number();
  }
  CHECK(e->FindValueByNumber(0)->name() == "TLP_UNSPECIFIED");
  CHECK(e->value_count() == 6);
  CHECK(e->FindValueByName("TLP_WHITE") == nullptr);  // TLP 1.0's name, replaced by CLEAR
}

TEST_CASE("every Frame kind exists in the oneof", "[proto][schema]") {
  struct Kind {
    const char* field;
    v1::Frame::KindCase kind;
  };
  const std::vector<Kind> kinds = {
      {"hello", v1::Frame::kHello},     {"welcome", v1::Frame::kWelcome},
      {"publish", v1::Frame::kPublish}, {"publish_ack", v1::Frame::kPublishAck},
      {"deliver", v1::Frame::kDeliver}, {"delivery_ack", v1::Frame::kDeliveryAck},
      {"ping", v1::Frame::kPing},       {"pong", v1::Frame::kPong},
      {"error", v1::Frame::kError},     {"recall", v1::Frame::kRecall},
      {"recall_ack", v1::Frame::kRecallAck},
      // The audit frames (20-29).
      {"audit_query", v1::Frame::kAuditQuery},
      {"audit_query_result", v1::Frame::kAuditQueryResult},
      {"consistency_proof_request", v1::Frame::kConsistencyProofRequest},
      {"consistency_proof", v1::Frame::kConsistencyProof},
  };
  const Descriptor* d = v1::Frame::descriptor();
  const auto* oneof = d->FindOneofByName("kind");
  REQUIRE(oneof != nullptr);
  CHECK(oneof->field_count() == static_cast<int>(kinds.size()));
  CHECK(d->field_count() == oneof->field_count());  // nothing outside the oneof
  for (const auto& k : kinds) {
    CAPTURE(k.field);
    const FieldDescriptor* f = d->FindFieldByName(k.field);
    REQUIRE(f != nullptr);
    CHECK(f->containing_oneof() == oneof);
    CHECK(f->number() == static_cast<int>(k.kind));
    v1::Frame frame;
    frame.GetReflection()->MutableMessage(&frame, f);
    CHECK(frame.kind_case() == k.kind);
  }
}
