#include "common/merkle.h"

#include <openssl/evp.h>

#include <algorithm>
#include <string>

namespace liaison::merkle {

namespace {
Hash Sha256(const void* data, size_t n) {
  Hash h;
  EVP_Digest(data, n, h.data(), nullptr, EVP_sha256(), nullptr);
  return h;
}
}  // namespace

Hash LeafHash(std::string_view leaf) {
  std::string buf;
  buf.reserve(leaf.size() + 1);
  buf.push_back('\0');
  buf.append(leaf);
  return Sha256(buf.data(), buf.size());
}

Hash NodeHash(const Hash& left, const Hash& right) {
  uint8_t buf[65];
  buf[0] = 0x01;
  std::copy(left.begin(), left.end(), buf + 1);
  std::copy(right.begin(), right.end(), buf + 33);
  return Sha256(buf, sizeof buf);
}

Hash EmptyRoot() { return Sha256("", 0); }

void Tree::Append(const Hash& leaf_hash) {
  frontier_.push_back({0, leaf_hash});
  while (frontier_.size() >= 2 && frontier_[frontier_.size() - 1].height == frontier_[frontier_.size() - 2].height) {
    Subtree right = frontier_.back();
    frontier_.pop_back();
    Subtree& left = frontier_.back();
    left.hash = NodeHash(left.hash, right.hash);
    left.height++;
  }
  ++size_;
}

// Folding the perfect subtrees from the right gives RFC 6962's split at the
// largest power of two below n at every level.
Hash Tree::Root() const {
  if (frontier_.empty()) return EmptyRoot();
  Hash root = frontier_.back().hash;
  for (size_t i = frontier_.size() - 1; i-- > 0;) root = NodeHash(frontier_[i].hash, root);
  return root;
}

Hash RootOf(const std::vector<Hash>& leaves) {
  if (leaves.empty()) return EmptyRoot();
  if (leaves.size() == 1) return leaves[0];
  size_t k = 1;
  while (k * 2 < leaves.size()) k *= 2;
  std::vector<Hash> left(leaves.begin(), leaves.begin() + static_cast<long>(k));
  std::vector<Hash> right(leaves.begin() + static_cast<long>(k), leaves.end());
  return NodeHash(RootOf(left), RootOf(right));
}

}  // namespace liaison::merkle
