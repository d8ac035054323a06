// RFC 6962 Merkle tree hashing over audit records: leaf hashes, an
// incrementally maintained tree (O(log n) state), and the root. Used by the
// broker's store and by the offline verifier alike. The hash functions are
// thread-safe (each thread hashes with its own context); a Tree is not.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace liaison::merkle {

using Hash = std::array<uint8_t, 32>;

// SHA-256(0x00 || leaf)
Hash LeafHash(std::string_view leaf);
// SHA-256(0x01 || left || right)
Hash NodeHash(const Hash& left, const Hash& right);
// The root of the empty tree: SHA-256 of nothing.
Hash EmptyRoot();

// The tree as its perfect subtrees, largest first ("the frontier").
class Tree {
 public:
  void Append(const Hash& leaf_hash);
  uint64_t size() const { return size_; }
  // RFC 6962 MTH of the leaves appended so far.
  Hash Root() const;

 private:
  struct Subtree {
    int height;
    Hash hash;
  };
  std::vector<Subtree> frontier_;
  uint64_t size_ = 0;
};

// RFC 6962 MTH of a list of leaf hashes (for tests and proofs).
Hash RootOf(const std::vector<Hash>& leaves);

// RFC 6962 audit path of leaf index in the tree of the first size leaves
// (index < size <= leaves.size()).
std::vector<Hash> InclusionProof(const std::vector<Hash>& leaves, uint64_t index, uint64_t size);
// RFC 9162 section 2.1.3.2: whether leaf_hash is leaf index of the tree of
// size leaves whose root is root.
bool VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size, const std::vector<Hash>& proof,
                     const Hash& root);

// RFC 6962 consistency proof between the trees of the first m and n leaves
// (0 < m <= n <= leaves.size()).
std::vector<Hash> ConsistencyProof(const std::vector<Hash>& leaves, uint64_t m, uint64_t n);
// RFC 9162 section 2.1.4.2: whether the tree of size n (root_n) extends the
// tree of size m (root_m).
bool VerifyConsistency(uint64_t m, uint64_t n, const Hash& root_m, const Hash& root_n, const std::vector<Hash>& proof);

}  // namespace liaison::merkle
