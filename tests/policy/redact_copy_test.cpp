// Unit tests for policy::RedactCopy (policy/redact.h): the walk over a
// stored message's bytes must give exactly the bytes of the definition:
// parse, ApplyObligations, the report's paths added to the envelope,
// serialize. Random messages of every type (by reflection, so a field added
// to the schema is covered) against random obligations; then bytes the
// serializer would not write, which must take the parsing path and still
// give the same bytes.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <catch2/catch.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "policy/redact.h"
#include "proto/detail/pb.h"
#include "proto/detail/varint.h"
#include "proto/names.h"

namespace {

using google::protobuf::FieldDescriptor;
using liaison::policy::Obligations;
using liaison::policy::PseudonymKey;
using liaison::policy::RedactCopy;
using liaison::policy::RedactedCopy;
using liaison::policy::RedactionReport;
using liaison::proto::PutVarint;
namespace v1 = liaison::v1;
namespace pb = google::protobuf;

const PseudonymKey kKey{"agr", 3, std::string(32, 'q')};

// Values that exercise pseudonyms and normalisation: empty, spaces only,
// mixed case, non-ASCII, long.
const std::vector<std::string>& Strings() {
  static const std::vector<std::string> v = {"",
                                             " ",
                                             "Anna de Vries",
                                             "  ÉMILE   dupont ",
                                             "x",
                                             "Ünïcødé ✓ naïve",
                                             "1999-02-28",
                                             "Keizersgracht 12, Amsterdam",
                                             std::string(300, 'z')};
  return v;
}

// Sets a random subset of m's fields, at every depth (to depth 4); repeated
// fields get 0 to 3 elements. Zero values are drawn too: a field without
// presence that holds one is simply unset.
void FillRandom(pb::Message* m, std::mt19937& rng, int depth) {
  const pb::Reflection* r = m->GetReflection();
  const pb::Descriptor* d = m->GetDescriptor();
  std::uniform_int_distribution<int> coin(0, 99);
  auto pick = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (coin(rng) < 35) continue;
    const bool rep = f->is_repeated();
    const int n = rep ? pick(4) : 1;
    for (int k = 0; k < n; ++k) {
      const int64_t number = std::vector<int64_t>{0, 1, -1, 7, 300, -70000, 1LL << 40}[static_cast<size_t>(pick(7))];
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          rep ? r->AddInt32(m, f, static_cast<int32_t>(number)) : r->SetInt32(m, f, static_cast<int32_t>(number));
          break;
        case FieldDescriptor::CPPTYPE_INT64: rep ? r->AddInt64(m, f, number) : r->SetInt64(m, f, number); break;
        case FieldDescriptor::CPPTYPE_UINT32:
          rep ? r->AddUInt32(m, f, static_cast<uint32_t>(number)) : r->SetUInt32(m, f, static_cast<uint32_t>(number));
          break;
        case FieldDescriptor::CPPTYPE_UINT64:
          rep ? r->AddUInt64(m, f, static_cast<uint64_t>(number)) : r->SetUInt64(m, f, static_cast<uint64_t>(number));
          break;
        case FieldDescriptor::CPPTYPE_DOUBLE: {
          const double v = std::vector<double>{0.0, -0.0, 52.37, -4.9}[static_cast<size_t>(pick(4))];
          rep ? r->AddDouble(m, f, v) : r->SetDouble(m, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_FLOAT:
          rep ? r->AddFloat(m, f, static_cast<float>(number)) : r->SetFloat(m, f, static_cast<float>(number));
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          rep ? r->AddBool(m, f, pick(2) == 1) : r->SetBool(m, f, pick(2) == 1);
          break;
        case FieldDescriptor::CPPTYPE_ENUM: {
          const auto* e = f->enum_type();
          const int v = e->value(pick(e->value_count()))->number();
          rep ? r->AddEnumValue(m, f, v) : r->SetEnumValue(m, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_STRING: {
          const std::string& v = Strings()[static_cast<size_t>(pick(static_cast<int>(Strings().size())))];
          rep ? r->AddString(m, f, v) : r->SetString(m, f, v);
          break;
        }
        case FieldDescriptor::CPPTYPE_MESSAGE:
          if (depth < 4) FillRandom(rep ? r->AddMessage(m, f) : r->MutableMessage(m, f), rng, depth + 1);
          break;
      }
    }
  }
}

// A random message of the given body type, envelope included.
v1::Message RandomMessage(const std::string& type, std::mt19937& rng) {
  v1::Message m;
  FillRandom(m.mutable_envelope(), rng, 1);
  const auto* body = v1::Message::descriptor()->FindFieldByName(type);
  REQUIRE(body != nullptr);
  FillRandom(m.GetReflection()->MutableMessage(&m, body), rng, 1);
  return m;
}

// Every path the obligations can name for a body type: the type alone, its
// containers and its leaves.
std::vector<std::string> AllPaths(const std::string& type) {
  std::set<std::string> out{type};
  for (const auto& [leaf, category] : liaison::policy::LeafPaths(type)) {
    for (size_t dot = leaf.find('.'); dot != std::string::npos; dot = leaf.find('.', dot + 1)) {
      out.insert(leaf.substr(0, dot));
    }
    out.insert(leaf);
  }
  return {out.begin(), out.end()};
}

Obligations RandomObligations(const std::string& type, std::mt19937& rng) {
  std::uniform_int_distribution<int> coin(0, 99);
  Obligations o;
  const auto* e = v1::DataCategory_descriptor();
  for (int i = 0; i < e->value_count(); ++i) {
    const int c = e->value(i)->number();
    if (coin(rng) < 20) o.redact_categories.insert(c);
    if (coin(rng) < 25) o.pseudonymise_categories.insert(c);
  }
  for (const std::string& p : AllPaths(type)) {
    if (coin(rng) < 4) o.redact_paths.insert(p);
    if (coin(rng) < 6) o.pseudonymise_paths.insert(p);
  }
  return o;
}

// The definition: parse, apply, add the paths, serialize.
RedactedCopy Reference(const std::string& wire, const Obligations& o, const PseudonymKey* key) {
  v1::Message m;
  REQUIRE(m.ParseFromString(wire));
  auto report = liaison::policy::ApplyObligations(&m, o, key);
  REQUIRE(report.ok());
  auto* env = m.mutable_envelope();  // (a copy always has one)
  for (const auto& p : report->redacted_paths) env->add_redacted_paths(p);
  for (const auto& p : report->pseudonymised_paths) env->add_pseudonymised_paths(p);
  RedactedCopy out;
  out.wire = m.SerializeAsString();
  out.report = *report;
  out.parsed = true;
  return out;
}

RedactedCopy MustCopy(const std::string& wire, const Obligations& o, const PseudonymKey* key = &kKey) {
  auto copy = RedactCopy(wire, o, key);
  INFO(copy.status().ToString());
  REQUIRE(copy.ok());
  return std::move(copy).value();
}

void CheckSame(const RedactedCopy& got, const RedactedCopy& want) {
  CHECK(got.report.redacted_paths == want.report.redacted_paths);
  CHECK(got.report.pseudonymised_paths == want.report.pseudonymised_paths);
  CHECK(got.wire == want.wire);
}

// Wire format by hand, for the bytes the serializer would not write.
std::string LengthDelimited(int number, const std::string& bytes) {
  std::string out;
  PutVarint(&out, static_cast<uint64_t>(number) << 3 | 2);
  PutVarint(&out, bytes.size());
  return out + bytes;
}
std::string VarintField(int number, uint64_t v) {
  std::string out;
  PutVarint(&out, static_cast<uint64_t>(number) << 3);
  PutVarint(&out, v);
  return out;
}

// A Message of an envelope and an incident report, from their bytes.
std::string MessageOf(const std::string& envelope, const std::string& report) {
  return LengthDelimited(v1::Message::kEnvelopeFieldNumber, envelope) +
         LengthDelimited(v1::Message::kIncidentReportFieldNumber, report);
}

}  // namespace

TEST_CASE("RedactCopy walks stored messages and gives the definition's bytes", "[redact]") {
  std::mt19937 rng(20261202);
  int walked = 0, with_paths = 0, total = 0;
  for (const std::string& type : liaison::proto::MessageTypeNames()) {
    for (int i = 0; i < 700; ++i) {
      const v1::Message m = RandomMessage(type, rng);
      const std::string wire = m.SerializeAsString();  // as the broker stores it
      const Obligations o = RandomObligations(type, rng);
      INFO(type << " #" << i);
      const RedactedCopy got = MustCopy(wire, o);
      CHECK_FALSE(got.parsed);
      walked += got.parsed ? 0 : 1;
      with_paths += got.report.redacted_paths.empty() && got.report.pseudonymised_paths.empty() ? 0 : 1;
      ++total;
      CheckSame(got, Reference(wire, o, &kKey));
    }
  }
  CHECK(walked == total);
  // The draws do redact and pseudonymise (not only copy).
  CHECK(with_paths > total / 2);
}

TEST_CASE("RedactCopy with no obligations copies the message as stored", "[redact]") {
  std::mt19937 rng(7);
  const v1::Message m = RandomMessage("case_referral", rng);
  const std::string wire = m.SerializeAsString();
  const RedactedCopy got = MustCopy(wire, Obligations{}, nullptr);
  CHECK_FALSE(got.parsed);
  CHECK(got.wire == wire);
  CHECK(got.report.redacted_paths.empty());
  CHECK(got.report.pseudonymised_paths.empty());
}

TEST_CASE("RedactCopy adds its paths after those the envelope already lists", "[redact]") {
  v1::Message m;
  m.mutable_envelope()->set_sender("police");
  m.mutable_envelope()->add_redacted_paths("incident_report.earlier");
  m.mutable_envelope()->add_pseudonymised_paths("incident_report.before");
  auto* report = m.mutable_incident_report();
  report->set_title("Graffiti");
  report->add_persons()->set_full_name("Anna de Vries");
  report->mutable_location()->set_latitude(52.1);
  Obligations o;
  o.pseudonymise_paths = {"incident_report.persons"};
  o.redact_paths = {"incident_report.location"};
  const std::string wire = m.SerializeAsString();
  const RedactedCopy got = MustCopy(wire, o);
  CHECK_FALSE(got.parsed);
  CheckSame(got, Reference(wire, o, &kKey));
  v1::Message out;
  REQUIRE(out.ParseFromString(got.wire));
  CHECK(std::vector<std::string>(out.envelope().redacted_paths().begin(), out.envelope().redacted_paths().end()) ==
        std::vector<std::string>{"incident_report.earlier", "incident_report.location"});
  CHECK(std::vector<std::string>(out.envelope().pseudonymised_paths().begin(),
                                 out.envelope().pseudonymised_paths().end()) ==
        std::vector<std::string>{"incident_report.before", "incident_report.persons.full_name"});
  CHECK(out.incident_report().persons(0).full_name() == liaison::policy::Pseudonym(kKey, "Anna de Vries"));
  CHECK_FALSE(out.incident_report().has_location());
}

TEST_CASE("RedactCopy parses bytes the serializer would not write and gives the same result", "[redact]") {
  v1::Message m;
  m.mutable_envelope()->set_sender("police");
  m.mutable_envelope()->set_message_id("b7d1e5a0-0000-4000-8000-000000000001");
  auto* report = m.mutable_incident_report();
  report->set_title("Threats at a school gate");
  report->add_persons()->set_full_name("Anna de Vries");
  report->mutable_occurred_at()->set_seconds(1700000000);
  const std::string envelope = m.envelope().SerializeAsString();
  const std::string body = report->SerializeAsString();
  const int title = v1::IncidentReport::kTitleFieldNumber;
  const int persons = v1::IncidentReport::kPersonsFieldNumber;
  const int occurred_at = v1::IncidentReport::kOccurredAtFieldNumber;
  // The serializer's order, and a tag that fits one byte.
  REQUIRE(occurred_at < persons);
  REQUIRE(persons < title);
  REQUIRE(title < 16);

  const std::string person = report->persons(0).SerializeAsString();
  const std::string when = LengthDelimited(occurred_at, report->occurred_at().SerializeAsString());
  const std::string who = LengthDelimited(persons, person);
  const std::string what = LengthDelimited(title, report->title());
  REQUIRE(when + who + what == body);
  std::string long_title_tag;  // the tag in two bytes where one does
  PutVarint(&long_title_tag, static_cast<uint64_t>(title) << 3 | 2);
  long_title_tag[0] = static_cast<char>(long_title_tag[0] | 0x80);
  long_title_tag.push_back('\0');

  // Each differs from body in one way only.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"an unknown field in the body", MessageOf(envelope, body + VarintField(999, 1))},
      {"an unknown field in the envelope", MessageOf(envelope + VarintField(999, 1), body)},
      {"fields out of order", MessageOf(envelope, when + what + who)},
      {"a singular field twice", MessageOf(envelope, when + when + who + what)},
      {"a field without presence that holds its default", MessageOf(envelope, when + who + LengthDelimited(title, ""))},
      {"a varint longer than it need be",
       MessageOf(envelope, when + who + long_title_tag + std::string(1, static_cast<char>(report->title().size())) +
                               report->title())},
      {"a Timestamp with its seconds written as 0",
       MessageOf(envelope, LengthDelimited(occurred_at, VarintField(1, 0) + VarintField(2, 5)) + who + what)},
      {"two bodies", MessageOf(envelope, body) + LengthDelimited(v1::Message::kIncidentReportFieldNumber, body)},
      {"the body before the envelope", LengthDelimited(v1::Message::kIncidentReportFieldNumber, body) +
                                           LengthDelimited(v1::Message::kEnvelopeFieldNumber, envelope)},
      {"no envelope", LengthDelimited(v1::Message::kIncidentReportFieldNumber, body)},
  };
  std::vector<Obligations> obligations(3);
  obligations[1].pseudonymise_categories = {v1::CAT_IDENTIFYING};
  obligations[2].redact_paths = {"incident_report.persons", "incident_report.title"};
  for (const auto& [what, wire] : cases) {
    for (size_t i = 0; i < obligations.size(); ++i) {
      INFO(what << ", obligations #" << i);
      const RedactedCopy got = MustCopy(wire, obligations[i]);
      // (Bytes that are redacted need not be as the serializer writes them.)
      if (i == 0) CHECK(got.parsed);
      CheckSame(got, Reference(wire, obligations[i], &kKey));
    }
  }
  // The unchanged bytes walk (so the cases above differ from them only in
  // what they name).
  CHECK_FALSE(MustCopy(MessageOf(envelope, body), obligations[1]).parsed);
}

TEST_CASE("RedactCopy fails as ApplyObligations does, and on bytes that do not parse", "[redact]") {
  v1::Message m;
  m.mutable_envelope()->set_sender("police");
  m.mutable_incident_report()->add_persons()->set_full_name("Anna de Vries");
  const std::string wire = m.SerializeAsString();
  Obligations o;
  o.pseudonymise_categories = {v1::CAT_IDENTIFYING};
  auto no_key = RedactCopy(wire, o, nullptr);
  REQUIRE_FALSE(no_key.ok());
  CHECK(no_key.status().message() == "pseudonymisation required but no pseudonym key given");
  const PseudonymKey short_key{"agr", 1, "short"};
  auto bad_key = RedactCopy(wire, o, &short_key);
  REQUIRE_FALSE(bad_key.ok());
  CHECK(bad_key.status().message().find("is not 32 bytes") != std::string::npos);

  auto garbage = RedactCopy(std::string("\x0a\x05\x01", 3), Obligations{}, nullptr);
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.status().code() == liaison::Status::Code::kInvalidArgument);
  CHECK(garbage.status().message() == "the stored message does not parse as liaison.v1.Message");
}
