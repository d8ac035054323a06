// Canonical audit leaf bytes: a round trip, every truncation refused, and
// the regression the audit fuzzer found.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "common/audit_record.h"
#include "common/merkle.h"

using namespace liaison;

TEST_CASE("audit leaves round-trip and are canonical", "[audit][leaf]") {
  audit::Record r;
  r.seq = 42;
  r.time_ms = 1764400000123;
  r.event = "decision";
  r.actor = "police";
  r.recipient = "school";
  r.tlp = 3;
  r.decision = "permit";
  r.body_hmac = std::string(64, 'e');
  const std::string leaf = audit::EncodeLeaf(r);
  CHECK(static_cast<uint8_t>(leaf[0]) == audit::kLeafVersion);
  auto back = audit::DecodeLeaf(leaf);
  REQUIRE(back.ok());
  CHECK(*back == r);
  CHECK(audit::EncodeLeaf(*back) == leaf);
  for (size_t n = 0; n < leaf.size(); ++n) {
    INFO(n);
    CHECK_FALSE(audit::DecodeLeaf(leaf.substr(0, n)).ok());
  }
  CHECK_FALSE(audit::DecodeLeaf(leaf + "x").ok());
  std::string v2 = leaf;
  v2[0] = 2;
  CHECK_FALSE(audit::DecodeLeaf(v2).ok());
}

TEST_CASE("regression (fuzz): a TLP value that an int cannot hold is refused", "[audit][leaf]") {
  std::ifstream in(LIAISON_UNIT_SOURCE_DIR "/tests/fuzz/corpus/audit/regression-tlp-out-of-range", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  REQUIRE(ss.str().size() > 25);
  CHECK_FALSE(audit::DecodeLeaf(ss.str()).ok());
}

TEST_CASE("the Merkle tree matches RFC 6962's definition at every size", "[audit][merkle]") {
  std::vector<merkle::Hash> leaves;
  merkle::Tree tree;
  CHECK(tree.Root() == merkle::EmptyRoot());
  for (int i = 0; i < 70; ++i) {
    leaves.push_back(merkle::LeafHash("leaf " + std::to_string(i)));
    tree.Append(leaves.back());
    INFO(i);
    CHECK(tree.Root() == merkle::RootOf(leaves));
  }
  // A known answer: the RFC 6962 hash of the empty leaf.
  const merkle::Hash empty_leaf = merkle::LeafHash("");
  CHECK(empty_leaf[0] == 0x6e);
  CHECK(empty_leaf[1] == 0x34);
}
