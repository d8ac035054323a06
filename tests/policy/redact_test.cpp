// Unit tests for policy/redact.h: redaction and pseudonymisation of message
// bodies through reflection. The inputs are built by reflection with every
// field set (repeated fields with two elements, unknown fields on every
// message), so a field added to the schema is covered without editing this
// file.
#include "policy/redact.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/timestamp.pb.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "proto/detail/pb.h"
#include "proto/names.h"

namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Reflection;
using liaison::policy::ApplyObligations;
using liaison::policy::IsValidBodyPath;
using liaison::policy::LeafPaths;
using liaison::policy::Normalise;
using liaison::policy::Obligations;
using liaison::policy::Pseudonym;
using liaison::policy::PseudonymKey;
using liaison::policy::RedactionReport;
namespace v1 = liaison::v1;
namespace pb = google::protobuf;

// Leaf: what carries its own data category (see tests/proto/schema_annotation_test.cpp).
bool IsLeaf(const FieldDescriptor* f) {
  if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) return true;
  if (f->is_map()) return true;
  return f->message_type() == pb::Timestamp::descriptor();
}

// (Generated proto3 classes of protobuf 3.21 have no unknown_fields()
// accessors; reflection has.)
pb::UnknownFieldSet* Unknown(pb::Message* m) { return m->GetReflection()->MutableUnknownFields(m); }
bool HasUnknown(const pb::Message& m) { return !m.GetReflection()->GetUnknownFields(m).empty(); }

int Category(const FieldDescriptor* f) { return f->options().GetExtension(v1::data_category); }

// Sets every field of m, at every depth; repeated fields get two elements.
// Strings are unique per path and element, so values can be traced.
void FillAll(pb::Message* m, const std::string& path) {
  const Reflection* r = m->GetReflection();
  const pb::Descriptor* d = m->GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string field_path = path + "." + f->name();
    const int n = f->is_repeated() ? 2 : 1;
    for (int k = 0; k < n; ++k) {
      const bool rep = f->is_repeated();
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          rep ? r->AddInt32(m, f, 7 + k) : r->SetInt32(m, f, 7);
          break;
        case FieldDescriptor::CPPTYPE_INT64:
          rep ? r->AddInt64(m, f, 7 + k) : r->SetInt64(m, f, 7);
          break;
        case FieldDescriptor::CPPTYPE_UINT32:
          rep ? r->AddUInt32(m, f, 7 + k) : r->SetUInt32(m, f, 7);
          break;
        case FieldDescriptor::CPPTYPE_UINT64:
          rep ? r->AddUInt64(m, f, 7 + k) : r->SetUInt64(m, f, 7);
          break;
        case FieldDescriptor::CPPTYPE_DOUBLE:
          rep ? r->AddDouble(m, f, 1.5 + k) : r->SetDouble(m, f, 1.5);
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          rep ? r->AddFloat(m, f, 1.5f + k) : r->SetFloat(m, f, 1.5f);
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          rep ? r->AddBool(m, f, true) : r->SetBool(m, f, true);
          break;
        case FieldDescriptor::CPPTYPE_ENUM: {
          const auto* e = f->enum_type();
          const int value = e->value(e->value_count() - 1 - k)->number();
          rep ? r->AddEnumValue(m, f, value) : r->SetEnumValue(m, f, value);
          break;
        }
        case FieldDescriptor::CPPTYPE_STRING: {
          const std::string value = "Value of " + field_path + " #" + std::to_string(k);
          rep ? r->AddString(m, f, value) : r->SetString(m, f, value);
          break;
        }
        case FieldDescriptor::CPPTYPE_MESSAGE:
          FillAll(rep ? r->AddMessage(m, f) : r->MutableMessage(m, f), field_path);
          break;
      }
    }
  }
  r->MutableUnknownFields(m)->AddVarint(999, 1);
}

// A message with the given body type and every field set, envelope included.
v1::Message FullMessage(const std::string& type) {
  v1::Message msg;
  FillAll(msg.mutable_envelope(), "envelope");
  const auto* body = v1::Message::descriptor()->FindFieldByName(type);
  REQUIRE(body != nullptr);
  FillAll(msg.GetReflection()->MutableMessage(&msg, body), type);
  Unknown(&msg)->AddVarint(999, 1);
  return msg;
}

// Every set leaf: path -> its values in text form, in order (all elements of
// all repeated containers above it), and path -> category.
struct Leaves {
  std::map<std::string, std::vector<std::string>> values;
  std::map<std::string, int> categories;
};

void CollectLeaves(const pb::Message& m, const std::string& path, Leaves* out) {
  const Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string field_path = path + "." + f->name();
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    if (IsLeaf(f)) {
      out->categories[field_path] = Category(f);
      for (int k = 0; k < n; ++k) {
        std::string text;
        pb::TextFormat::PrintFieldValueToString(m, f, f->is_repeated() ? k : -1, &text);
        out->values[field_path].push_back(text);
      }
    } else {
      for (int k = 0; k < n; ++k) {
        CollectLeaves(f->is_repeated() ? r->GetRepeatedMessage(m, f, k) : r->GetMessage(m, f),
                      field_path, out);
      }
    }
  }
}

// Unknown fields are not compared (they are dropped; checked on their own).
Leaves BodyLeaves(v1::Message msg) {
  msg.DiscardUnknownFields();
  Leaves out;
  const auto* oneof = v1::Message::descriptor()->FindOneofByName("body");
  const auto* body = msg.GetReflection()->GetOneofFieldDescriptor(msg, oneof);
  if (body != nullptr) CollectLeaves(msg.GetReflection()->GetMessage(msg, body), body->name(), &out);
  return out;
}

// Paths of messages (at any depth, leaves like Timestamp included) that
// still carry unknown fields.
void FindUnknownFields(const pb::Message& m, const std::string& path, std::vector<std::string>* out) {
  const Reflection* r = m.GetReflection();
  if (!r->GetUnknownFields(m).empty()) out->push_back(path);
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int k = 0; k < n; ++k) {
      FindUnknownFields(f->is_repeated() ? r->GetRepeatedMessage(m, f, k) : r->GetMessage(m, f),
                        path + "." + f->name(), out);
    }
  }
}

std::vector<std::string> UnknownFieldPaths(const pb::Message& m) {
  std::vector<std::string> out;
  FindUnknownFields(m, "message", &out);
  return out;
}

// The lead's check, independently of the report: walk the result and list
// every set leaf whose category is in cats.
void FindLeavesIn(const pb::Message& m, const std::string& path, const std::set<int>& cats,
                  std::vector<std::string>* out) {
  const Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string field_path = path + "." + f->name();
    if (IsLeaf(f)) {
      if (cats.count(Category(f)) != 0) out->push_back(field_path);
      continue;
    }
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int k = 0; k < n; ++k) {
      FindLeavesIn(f->is_repeated() ? r->GetRepeatedMessage(m, f, k) : r->GetMessage(m, f),
                   field_path, cats, out);
    }
  }
}

PseudonymKey TestKey(const std::string& agreement = "agr", uint32_t version = 1, char fill = 'k') {
  return PseudonymKey{agreement, version, std::string(32, fill)};
}

std::vector<int> AllCategories() {
  std::vector<int> out;
  const auto* e = v1::DataCategory_descriptor();
  for (int i = 0; i < e->value_count(); ++i) {
    if (e->value(i)->number() != v1::CAT_UNSPECIFIED) out.push_back(e->value(i)->number());
  }
  return out;
}

std::string Serialised(const pb::Message& m) {
  std::string out;
  REQUIRE(m.SerializeToString(&out));
  return out;
}

RedactionReport MustApply(v1::Message* msg, const Obligations& o, const PseudonymKey* key = nullptr) {
  auto report = ApplyObligations(msg, o, key);
  INFO(report.status().ToString());
  REQUIRE(report.ok());
  return std::move(report).value();
}

}  // namespace

TEST_CASE("the test input sets every leaf field LeafPaths lists, and no other", "[redact]") {
  for (const std::string& type : liaison::proto::MessageTypeNames()) {
    INFO(type);
    const Leaves leaves = BodyLeaves(FullMessage(type));
    std::map<std::string, int> expected;
    for (const auto& [path, category] : LeafPaths(type)) expected[path] = category;
    CHECK(leaves.categories == expected);
    CHECK(expected.size() > 5);
    for (const auto& [path, category] : expected) {
      INFO(path);
      CHECK(category != v1::CAT_UNSPECIFIED);
      CHECK(IsValidBodyPath(path));
    }
  }
  CHECK(LeafPaths("no_such_type").empty());
  CHECK(LeafPaths("envelope").empty());
}

TEST_CASE("no field of a redacted category survives, on every message type", "[redact]") {
  for (const std::string& type : liaison::proto::MessageTypeNames()) {
    for (const int category : AllCategories()) {
      INFO(type << ", redacting " << liaison::proto::DataCategoryName(category));
      const v1::Message original = FullMessage(type);
      v1::Message msg = original;
      Obligations o;
      o.redact_categories = {category};
      const RedactionReport report = MustApply(&msg, o);

      // Walk the body (the envelope is not redacted: checked below).
      std::vector<std::string> survivors;
      const auto* body = v1::Message::descriptor()->FindFieldByName(type);
      FindLeavesIn(msg.GetReflection()->GetMessage(msg, body), type, {category}, &survivors);
      CHECK(survivors.empty());
      // The walk finds them before redaction (so it can fail).
      std::vector<std::string> present;
      FindLeavesIn(original.GetReflection()->GetMessage(original, body), type, {category}, &present);
      std::set<std::string> expected_present;
      for (const auto& [path, c] : LeafPaths(type)) {
        if (c == category) expected_present.insert(path);
      }
      CHECK(std::set<std::string>(present.begin(), present.end()) == expected_present);
      CHECK(UnknownFieldPaths(msg).empty());
      CHECK(liaison::proto::MessageTypeName(msg) == type);

      // Exactly the fields of that category went, and they are reported;
      // everything else is untouched.
      const Leaves before = BodyLeaves(original);
      const Leaves after = BodyLeaves(msg);
      std::vector<std::string> expected_report;
      auto expected_values = before.values;
      for (const auto& [path, c] : before.categories) {
        if (c == category) {
          expected_report.push_back(path);
          expected_values.erase(path);
        }
      }
      CHECK(after.values == expected_values);
      CHECK(report.redacted_paths == expected_report);
      CHECK(report.pseudonymised_paths.empty());

      // The envelope is not redacted (its unknown fields are dropped).
      v1::Envelope envelope = original.envelope();
      envelope.DiscardUnknownFields();
      CHECK(Serialised(msg.envelope()) == Serialised(envelope));
    }
  }
}

TEST_CASE("redacting every category leaves an empty body of the same type", "[redact]") {
  const std::vector<int> all = AllCategories();
  for (const std::string& type : liaison::proto::MessageTypeNames()) {
    INFO(type);
    v1::Message msg = FullMessage(type);
    Obligations o;
    o.redact_categories.insert(all.begin(), all.end());
    const RedactionReport report = MustApply(&msg, o);
    CHECK(liaison::proto::MessageTypeName(msg) == type);
    CHECK(BodyLeaves(msg).values.empty());
    CHECK(report.redacted_paths.size() == LeafPaths(type).size());
  }
}

TEST_CASE("unknown fields are dropped everywhere, even with no obligations", "[redact]") {
  v1::Message msg;
  msg.mutable_envelope()->set_sender("police");
  Unknown(msg.mutable_envelope())->AddVarint(999, 1);
  Unknown(msg.mutable_envelope()->mutable_created_at())->AddVarint(998, 2);
  auto* report = msg.mutable_incident_report();
  report->set_title("t");
  Unknown(report)->AddLengthDelimited(997, "hidden personal data");
  report->mutable_location()->set_municipality("Utrecht");
  Unknown(report->mutable_location())->AddVarint(999, 1);
  report->add_persons()->set_full_name("A");
  Unknown(report->mutable_persons(0))->AddVarint(999, 1);
  Unknown(report->add_persons())->AddFixed64(999, 42);
  Unknown(report->mutable_occurred_at())->AddVarint(999, 1);
  Unknown(&msg)->AddVarint(999, 1);
  REQUIRE(UnknownFieldPaths(msg).size() == 8);

  const RedactionReport result = MustApply(&msg, Obligations{});
  CHECK(UnknownFieldPaths(msg).empty());
  CHECK_FALSE(HasUnknown(msg.incident_report()));
  CHECK_FALSE(HasUnknown(msg.incident_report().location()));
  CHECK_FALSE(HasUnknown(msg.incident_report().persons(1)));
  CHECK_FALSE(HasUnknown(msg.envelope()));
  CHECK(result.redacted_paths.empty());
  CHECK(result.pseudonymised_paths.empty());
  // Known fields are kept.
  CHECK(msg.envelope().sender() == "police");
  CHECK(msg.incident_report().location().municipality() == "Utrecht");
  CHECK(msg.incident_report().persons_size() == 2);
  CHECK(msg.incident_report().persons(0).full_name() == "A");
}

TEST_CASE("redaction by path", "[redact]") {
  struct Case {
    std::string path;
    std::vector<std::string> report;
  };
  const std::vector<Case> cases = {
      {"incident_report.persons.full_name", {"incident_report.persons.full_name"}},
      {"incident_report.persons", {"incident_report.persons"}},
      {"incident_report.location", {"incident_report.location"}},
      {"incident_report.occurred_at", {"incident_report.occurred_at"}},
      {"incident_report.bias_motivations", {"incident_report.bias_motivations"}},
      {"case_referral.person", {}},  // another message type: nothing to do
      {"incident_report.persons.full", {}},  // a prefix of a name is not its parent
  };
  for (const Case& c : cases) {
    INFO(c.path);
    const v1::Message original = FullMessage("incident_report");
    v1::Message msg = original;
    Obligations o;
    o.redact_paths = {c.path};
    const RedactionReport report = MustApply(&msg, o);
    CHECK(report.redacted_paths == c.report);
    const Leaves before = BodyLeaves(original);
    const Leaves after = BodyLeaves(msg);
    for (const auto& [path, values] : before.values) {
      INFO(path);
      const bool under = path == c.path || path.rfind(c.path + ".", 0) == 0;
      CHECK(after.values.count(path) == (under ? 0u : 1u));
      if (!under) CHECK(after.values.at(path) == values);
    }
  }

  SECTION("all persons' names, none of their other fields") {
    v1::Message msg = FullMessage("incident_report");
    Obligations o;
    o.redact_paths = {"incident_report.persons.full_name"};
    MustApply(&msg, o);
    REQUIRE(msg.incident_report().persons_size() == 2);
    for (const auto& p : msg.incident_report().persons()) {
      CHECK(p.full_name().empty());
      CHECK_FALSE(p.national_id().empty());
    }
  }
  SECTION("the body type alone names the whole body") {
    v1::Message msg = FullMessage("case_update");
    Obligations o;
    o.redact_paths = {"case_update"};
    const RedactionReport report = MustApply(&msg, o);
    CHECK(msg.has_case_update());
    CHECK(msg.case_update().ByteSizeLong() == 0);
    CHECK(report.redacted_paths ==
          std::vector<std::string>{"case_update.actions_taken", "case_update.closure_reason",
                                   "case_update.contact", "case_update.next_review_at",
                                   "case_update.risk_level", "case_update.status",
                                   "case_update.summary"});
  }
}

TEST_CASE("only fields that were set are reported", "[redact]") {
  v1::Message msg;
  msg.mutable_incident_report()->set_title("Graffiti");
  msg.mutable_incident_report()->add_persons()->set_role(v1::ROLE_VICTIM);
  Obligations o;
  o.redact_categories = {v1::CAT_FREE_TEXT, v1::CAT_IDENTIFYING};
  o.redact_paths = {"incident_report.location"};
  const RedactionReport report = MustApply(&msg, o);
  CHECK(report.redacted_paths == std::vector<std::string>{"incident_report.title"});
  CHECK(msg.incident_report().title().empty());
  CHECK(msg.incident_report().persons(0).role() == v1::ROLE_VICTIM);
}

TEST_CASE("Pseudonym: format, a known answer, and stability", "[pseudonym]") {
  std::string raw;
  for (int i = 0; i < 32; ++i) raw.push_back(static_cast<char>(i));
  const PseudonymKey key{"agr", 3, raw};
  // HMAC-SHA256(00..1f, "émile dupont"), first 16 bytes: computed with
  // `openssl dgst -sha256 -mac HMAC`. Pinned: pseudonyms recipients hold
  // must not change across releases.
  CHECK(Pseudonym(key, "Émile Dupont") == "ps:v3:89cb32282fa2ace9c519b2bf19c69a1b");

  const PseudonymKey k1 = TestKey("agr-a", 1, 'a');
  const std::string p = Pseudonym(k1, "Jan Jansen");
  CHECK(std::regex_match(p, std::regex("ps:v1:[0-9a-f]{32}")));
  CHECK(Pseudonym(k1, "Jan Jansen") == p);
  CHECK(Pseudonym(k1, "Jan Janssen") != p);
  // Another agreement has another key; a rotated key is another key too.
  CHECK(Pseudonym(TestKey("agr-b", 1, 'b'), "Jan Jansen") != p);
  const std::string rotated = Pseudonym(TestKey("agr-a", 2, 'c'), "Jan Jansen");
  CHECK(rotated.rfind("ps:v2:", 0) == 0);
  CHECK(rotated.substr(6) != p.substr(6));
}

TEST_CASE("Pseudonym is equal under normalisation", "[pseudonym]") {
  const PseudonymKey key = TestKey();
  const std::string nfc = "\xc3\x89mile Dupont";   // É precomposed
  const std::string nfd = "E\xcc\x81mile dupont";  // E + combining acute
  const std::string expected = Pseudonym(key, nfc);
  for (const std::string& v : {nfd, std::string("  \xc3\x89MILE  Dupont "),
                               std::string("\xc3\xa9mile\tdupont"),
                               std::string("\xc3\xa9mile\xc2\xa0\xe2\x80\x83 dupont\n")}) {
    INFO(v);
    CHECK(Pseudonym(key, v) == expected);
  }
  CHECK(Pseudonym(key, "Emile Dupont") != expected);
  CHECK(Pseudonym(key, "\xc3\xa9mile dupon") != expected);
}

TEST_CASE("Normalise", "[pseudonym]") {
  struct Case {
    std::string in, out;
  };
  const std::vector<Case> cases = {
      {"", ""},
      {"   ", ""},
      {"abc", "abc"},
      {"  \xc3\x89MILE  Dupont  ", "\xc3\xa9mile dupont"},
      {"E\xcc\x81mile", "\xc3\xa9mile"},                 // NFD -> NFC
      {"Stra\xc3\x9f" "e", "strasse"},                    // full case folding
      {"a\xc2\xa0\xe2\x80\x83\r\n b", "a b"},             // NBSP, EM SPACE, CR LF
      {"a\xe2\x80\x8b" "b", "a\xe2\x80\x8b" "b"},         // ZERO WIDTH SPACE is not white space
      // Invalid UTF-8: bytes kept, ASCII folded and collapsed.
      {"\xff\xfe AB \t c ", "\xff\xfe ab c"},
      {"\xc3(", "\xc3("},
  };
  for (const Case& c : cases) {
    INFO(c.in);
    CHECK(Normalise(c.in) == c.out);
  }
  // Distinct invalid inputs stay distinct (no replacement characters).
  CHECK(Normalise("\xff") != Normalise("\xfe"));
}

TEST_CASE("Normalise: ASCII input, which takes a shortcut, normalises as the Unicode path does", "[pseudonym]") {
  // Appending U+00E9 (it folds to itself) sends the same ASCII text through
  // libunistring's case folding, NFC and White_Space collapsing; the two
  // must agree, up to the é and the space before it when the text ended in
  // white space.
  const std::string e_acute = "\xc3\xa9";
  auto through_unicode = [&](const std::string& ascii) {
    std::string out = Normalise(ascii + e_acute);
    REQUIRE(out.size() >= e_acute.size());
    out.resize(out.size() - e_acute.size());
    if (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
  };
  std::vector<std::string> inputs;
  for (int c = 0; c < 128; ++c) {
    inputs.push_back(std::string("Ab") + static_cast<char>(c) + "Cd");
    inputs.push_back(std::string(1, static_cast<char>(c)));
  }
  std::mt19937 rng(7);
  const std::string alphabet = "aAzZ09 \t\n\v\f\r_-.'@\x01\x7f";
  for (int i = 0; i < 2000; ++i) {
    std::string in(rng() % 12, ' ');
    for (char& ch : in) ch = alphabet[rng() % alphabet.size()];
    inputs.push_back(in);
  }
  for (const std::string& in : inputs) {
    INFO("input bytes: " << in.size() << " '" << in << "'");
    CHECK(Normalise(in) == through_unicode(in));
  }
  CHECK(Normalise(" \t Emile\r\n  DUPONT \f") == "emile dupont");
}

TEST_CASE("pseudonymisation replaces strings and redacts other leaves", "[redact]") {
  const PseudonymKey key = TestKey();
  const v1::Message original = FullMessage("incident_report");
  v1::Message msg = original;
  Obligations o;
  o.pseudonymise_categories = {v1::CAT_IDENTIFYING, v1::CAT_PERSONAL};
  const RedactionReport report = MustApply(&msg, o, &key);

  const auto& before = original.incident_report();
  const auto& after = msg.incident_report();
  REQUIRE(after.persons_size() == 2);
  for (int i = 0; i < 2; ++i) {
    INFO(i);
    CHECK(after.persons(i).full_name() == Pseudonym(key, before.persons(i).full_name()));
    CHECK(after.persons(i).date_of_birth() == Pseudonym(key, before.persons(i).date_of_birth()));
    CHECK(after.persons(i).notes() == before.persons(i).notes());  // free text: not matched
    CHECK(after.persons(i).gender() == v1::GENDER_UNSPECIFIED);     // enum: redacted
    CHECK(after.persons(i).age() == 0);                             // number: redacted
    CHECK(after.persons(i).role() == before.persons(i).role());     // criminal: not matched
  }
  CHECK_FALSE(after.has_occurred_at());  // Timestamp: redacted
  CHECK(after.location().latitude() == 0);
  CHECK(after.location().street_address() == Pseudonym(key, before.location().street_address()));
  CHECK(after.location().municipality() == before.location().municipality());

  std::vector<std::string> expected_pseudonymised, expected_redacted;
  for (const auto& [path, category] : LeafPaths("incident_report")) {
    if (category != v1::CAT_IDENTIFYING && category != v1::CAT_PERSONAL) continue;
    const auto* f = [&, path = path] {  // clang < 16 cannot capture a structured binding
      const pb::Descriptor* d = v1::IncidentReport::descriptor();
      const FieldDescriptor* field = nullptr;
      std::string rest = path.substr(path.find('.') + 1);
      while (true) {
        const size_t dot = rest.find('.');
        field = d->FindFieldByName(rest.substr(0, dot));
        if (dot == std::string::npos) return field;
        d = field->message_type();
        rest = rest.substr(dot + 1);
      }
    }();
    (f->type() == FieldDescriptor::TYPE_STRING ? expected_pseudonymised : expected_redacted)
        .push_back(path);
  }
  std::sort(expected_pseudonymised.begin(), expected_pseudonymised.end());
  std::sort(expected_redacted.begin(), expected_redacted.end());
  CHECK(report.pseudonymised_paths == expected_pseudonymised);
  CHECK(report.redacted_paths == expected_redacted);
  CHECK_FALSE(expected_redacted.empty());
  CHECK_FALSE(expected_pseudonymised.empty());
}

TEST_CASE("pseudonymising an enum redacts it", "[redact]") {
  const PseudonymKey key = TestKey();
  v1::Message msg = FullMessage("case_referral");
  Obligations o;
  o.pseudonymise_paths = {"case_referral.risk_level", "case_referral.concerns.type"};
  const RedactionReport report = MustApply(&msg, o, &key);
  CHECK(msg.case_referral().risk_level() == v1::RISK_UNSPECIFIED);
  REQUIRE(msg.case_referral().concerns_size() == 2);
  CHECK(msg.case_referral().concerns(0).type() == v1::CONCERN_UNSPECIFIED);
  CHECK(report.redacted_paths ==
        std::vector<std::string>{"case_referral.concerns.type", "case_referral.risk_level"});
  CHECK(report.pseudonymised_paths.empty());
}

TEST_CASE("pseudonymising by path: every element, every string under it", "[redact]") {
  const PseudonymKey key = TestKey();
  const v1::Message original = FullMessage("case_referral");
  v1::Message msg = original;
  Obligations o;
  o.pseudonymise_paths = {"case_referral.person"};
  const RedactionReport report = MustApply(&msg, o, &key);
  const auto& before = original.case_referral().person();
  const auto& after = msg.case_referral().person();
  REQUIRE(after.languages_size() == 2);
  CHECK(after.languages(0) == Pseudonym(key, before.languages(0)));
  CHECK(after.languages(1) == Pseudonym(key, before.languages(1)));
  CHECK(after.full_name() == Pseudonym(key, before.full_name()));
  CHECK(after.gender() == v1::GENDER_UNSPECIFIED);
  CHECK(report.redacted_paths == std::vector<std::string>{"case_referral.person.gender"});
  CHECK(std::find(report.pseudonymised_paths.begin(), report.pseudonymised_paths.end(),
                  "case_referral.person.languages") != report.pseudonymised_paths.end());
  CHECK(msg.case_referral().summary() == original.case_referral().summary());
}

TEST_CASE("the same value gives the same pseudonym wherever it appears", "[redact]") {
  const PseudonymKey key = TestKey();
  v1::Message msg;
  msg.mutable_incident_report()->add_persons()->set_full_name("Jan Jansen");
  msg.mutable_incident_report()->add_persons()->set_full_name("  JAN   jansen");
  Obligations o;
  o.pseudonymise_categories = {v1::CAT_IDENTIFYING};
  MustApply(&msg, o, &key);
  CHECK(msg.incident_report().persons(0).full_name() ==
        msg.incident_report().persons(1).full_name());
  CHECK(msg.incident_report().persons(0).full_name() != "Jan Jansen");
}

TEST_CASE("redaction wins over pseudonymisation", "[redact]") {
  const PseudonymKey key = TestKey();
  const v1::Message original = FullMessage("incident_report");

  SECTION("redact by category, pseudonymise by path") {
    v1::Message msg = original;
    Obligations o;
    o.redact_categories = {v1::CAT_IDENTIFYING};
    o.pseudonymise_paths = {"incident_report.persons"};
    const RedactionReport report = MustApply(&msg, o, &key);
    const auto& p = msg.incident_report().persons(0);
    CHECK(p.full_name().empty());
    CHECK(p.national_id().empty());
    CHECK(p.notes() == Pseudonym(key, original.incident_report().persons(0).notes()));
    auto has = [](const std::vector<std::string>& v, const std::string& s) {
      return std::find(v.begin(), v.end(), s) != v.end();
    };
    CHECK(has(report.redacted_paths, "incident_report.persons.full_name"));
    CHECK_FALSE(has(report.pseudonymised_paths, "incident_report.persons.full_name"));
    CHECK(has(report.pseudonymised_paths, "incident_report.persons.notes"));
  }
  SECTION("redact by path, pseudonymise by category") {
    v1::Message msg = original;
    Obligations o;
    o.redact_paths = {"incident_report.persons.full_name"};
    o.pseudonymise_categories = {v1::CAT_IDENTIFYING};
    const RedactionReport report = MustApply(&msg, o, &key);
    const auto& p = msg.incident_report().persons(1);
    CHECK(p.full_name().empty());
    CHECK(p.national_id() == Pseudonym(key, original.incident_report().persons(1).national_id()));
    CHECK(report.redacted_paths == std::vector<std::string>{"incident_report.persons.full_name"});
  }
  SECTION("the same category both ways") {
    v1::Message msg = original;
    Obligations o;
    o.redact_categories = {v1::CAT_FREE_TEXT};
    o.pseudonymise_categories = {v1::CAT_FREE_TEXT};
    const RedactionReport report = MustApply(&msg, o, &key);
    CHECK(msg.incident_report().description().empty());
    CHECK(report.pseudonymised_paths.empty());
  }
}

TEST_CASE("pseudonymisation without a usable key fails and changes nothing", "[redact]") {
  const v1::Message original = FullMessage("incident_report");
  Obligations o;
  o.redact_categories = {v1::CAT_FREE_TEXT};
  o.pseudonymise_categories = {v1::CAT_IDENTIFYING};

  v1::Message msg = original;
  auto result = ApplyObligations(&msg, o, nullptr);
  CHECK_FALSE(result.ok());
  CHECK(Serialised(msg) == Serialised(original));
  CHECK_FALSE(UnknownFieldPaths(msg).empty());

  const PseudonymKey short_key{"agr", 1, "too short"};
  result = ApplyObligations(&msg, o, &short_key);
  CHECK_FALSE(result.ok());
  CHECK(Serialised(msg) == Serialised(original));

  // Redaction alone needs no key.
  o.pseudonymise_categories.clear();
  CHECK(ApplyObligations(&msg, o, nullptr).ok());
}

TEST_CASE("IsValidBodyPath", "[redact]") {
  for (const char* path : {"incident_report", "incident_report.persons",
                           "incident_report.persons.full_name", "incident_report.occurred_at",
                           "incident_report.location.latitude", "case_referral.person.languages",
                           "case_referral.concerns.observed_at", "case_update.contact.email"}) {
    INFO(path);
    CHECK(IsValidBodyPath(path));
  }
  for (const char* path :
       {"", ".", "envelope", "envelope.sender", "message.incident_report", "Incident_report",
        "incident_report.", ".incident_report", "incident_report..persons",
        "incident_report.persons.", "incident_report.persons[0].full_name",
        "incident_report.persons.*", "incident_report.nope", "incident_report.persons.full_name.x",
        "incident_report.occurred_at.seconds", "incident_report.title.x",
        "case_update.person"}) {
    INFO(path);
    CHECK_FALSE(IsValidBodyPath(path));
  }
}

TEST_CASE("Obligations: empty and Merge (the union)", "[redact]") {
  Obligations a;
  CHECK(a.empty());
  a.redact_categories = {v1::CAT_IDENTIFYING};
  a.pseudonymise_paths = {"case_referral.person"};
  CHECK_FALSE(a.empty());
  Obligations b;
  b.redact_categories = {v1::CAT_SPECIAL_CATEGORY, v1::CAT_IDENTIFYING};
  b.redact_paths = {"incident_report.persons"};
  b.pseudonymise_categories = {v1::CAT_PERSONAL};
  a.Merge(b);
  CHECK(a.redact_categories == std::set<int>{v1::CAT_IDENTIFYING, v1::CAT_SPECIAL_CATEGORY});
  CHECK(a.redact_paths == std::set<std::string>{"incident_report.persons"});
  CHECK(a.pseudonymise_categories == std::set<int>{v1::CAT_PERSONAL});
  CHECK(a.pseudonymise_paths == std::set<std::string>{"case_referral.person"});
  Obligations c;
  c.Merge(Obligations{});
  CHECK(c.empty());
}
