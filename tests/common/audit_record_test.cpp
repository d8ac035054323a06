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

TEST_CASE("a record encoded from its fields (as the verifier does from an export's columns) is its leaf",
          "[audit][leaf]") {
  audit::Record r;
  r.seq = 7;
  r.time_ms = -5;  // any int64 is a time
  r.event = "queued";
  r.case_id = "NS-2026-0142";
  r.tlp = 0x7fffffff;
  r.detail = std::string("nul \0 inside", 13);
  const std::string leaf = audit::EncodeLeaf(r);
  audit::RecordView v;
  const char* why = nullptr;
  REQUIRE(audit::DecodeLeafView(leaf, &v, &why));
  std::string buffer;
  std::string_view encoded;
  REQUIRE(audit::EncodeLeafView(v, &buffer, &encoded, &why));
  CHECK(encoded == leaf);
  // The buffer is reused: a shorter record after a longer one is exact.
  audit::Record shorter;
  shorter.seq = 8;
  const std::string short_leaf = audit::EncodeLeaf(shorter);
  REQUIRE(audit::DecodeLeafView(short_leaf, &v, &why));
  REQUIRE(audit::EncodeLeafView(v, &buffer, &encoded, &why));
  CHECK(encoded == short_leaf);
  CHECK(buffer.size() >= leaf.size());
  // Fields that no leaf holds are refused, as DecodeLeafView refuses their bytes.
  for (int64_t tlp : {int64_t{-1}, int64_t{0x80000000}, INT64_MIN, INT64_MAX}) {
    INFO(tlp);
    v.tlp = tlp;
    why = nullptr;
    CHECK_FALSE(audit::EncodeLeafView(v, &buffer, &encoded, &why));
    CHECK(why != nullptr);
  }
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

TEST_CASE("RFC 6962 inclusion proofs verify for every leaf, and fail when altered", "[audit][merkle]") {
  std::vector<merkle::Hash> leaves;
  for (int i = 0; i < 40; ++i) leaves.push_back(merkle::LeafHash("record " + std::to_string(i)));
  for (uint64_t size = 1; size <= leaves.size(); ++size) {
    const std::vector<merkle::Hash> prefix(leaves.begin(), leaves.begin() + static_cast<long>(size));
    const merkle::Hash root = merkle::RootOf(prefix);
    for (uint64_t i = 0; i < size; ++i) {
      auto proof = merkle::InclusionProof(leaves, i, size);
      INFO("size " << size << " index " << i);
      REQUIRE(merkle::VerifyInclusion(leaves[i], i, size, proof, root));
      if (size > 1) CHECK_FALSE(merkle::VerifyInclusion(leaves[(i + 1) % size], i, size, proof, root));
      // (The tree size is bound by the signed checkpoint, not by the proof.)
      if (size > 1) CHECK_FALSE(merkle::VerifyInclusion(leaves[i], (i + 1) % size, size, proof, root));
      if (!proof.empty()) {
        proof[0][3] ^= 1;
        CHECK_FALSE(merkle::VerifyInclusion(leaves[i], i, size, proof, root));
      }
    }
  }
}

TEST_CASE("RFC 6962 consistency proofs verify between every pair of sizes, and fail when altered",
          "[audit][merkle]") {
  std::vector<merkle::Hash> leaves;
  for (int i = 0; i < 33; ++i) leaves.push_back(merkle::LeafHash("record " + std::to_string(i)));
  auto root = [&](uint64_t n) {
    return merkle::RootOf(std::vector<merkle::Hash>(leaves.begin(), leaves.begin() + static_cast<long>(n)));
  };
  for (uint64_t n = 1; n <= leaves.size(); ++n) {
    for (uint64_t m = 1; m <= n; ++m) {
      auto proof = merkle::ConsistencyProof(leaves, m, n);
      INFO("m " << m << " n " << n);
      REQUIRE(merkle::VerifyConsistency(m, n, root(m), root(n), proof));
      if (m < n) {
        merkle::Hash other = root(m);
        other[0] ^= 1;
        CHECK_FALSE(merkle::VerifyConsistency(m, n, other, root(n), proof));
        CHECK_FALSE(merkle::VerifyConsistency(m, n, root(m), other, proof));
        auto bad = proof;
        bad.back()[7] ^= 1;
        CHECK_FALSE(merkle::VerifyConsistency(m, n, root(m), root(n), bad));
      }
    }
  }
}
