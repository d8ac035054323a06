// RFC 6962 Merkle tree hashing over audit records: leaf hashes, an
// incrementally maintained tree (O(log n) state), and the root. Used by the
// broker's store and by the offline verifier alike. Not thread-safe.
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

}  // namespace liaison::merkle
