#include "common/merkle.h"

#include <algorithm>
#include <string>

#include "common/sha256.h"

namespace liaison::merkle {

// SHA-256 is most of the cost of verifying a log (a leaf hash per record and
// about one node hash per record): crypto::Sha256 neither looks the
// algorithm up nor allocates per hash.
Hash LeafHash(std::string_view leaf) { return crypto::Sha256(0x00, leaf); }

Hash NodeHash(const Hash& left, const Hash& right) {
  // One 65-byte input hashes in two SHA-256 blocks whichever way it is fed.
  uint8_t buf[64];
  std::copy(left.begin(), left.end(), buf);
  std::copy(right.begin(), right.end(), buf + 32);
  return crypto::Sha256(0x01, std::string_view(reinterpret_cast<const char*>(buf), sizeof buf));
}

Hash EmptyRoot() {
  static const Hash empty = [] {
    Hash h;
    h = crypto::Sha256(std::string_view());
    return h;
  }();
  return empty;
}

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

namespace {

using Span = std::pair<const Hash*, uint64_t>;  // first leaf, count

uint64_t SplitPoint(uint64_t n) {  // the largest power of two below n
  uint64_t k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

Hash Mth(Span d) {
  if (d.second == 0) return EmptyRoot();
  if (d.second == 1) return d.first[0];
  const uint64_t k = SplitPoint(d.second);
  return NodeHash(Mth({d.first, k}), Mth({d.first + k, d.second - k}));
}

void Path(uint64_t m, Span d, std::vector<Hash>* out) {
  if (d.second <= 1) return;
  const uint64_t k = SplitPoint(d.second);
  if (m < k) {
    Path(m, {d.first, k}, out);
    out->push_back(Mth({d.first + k, d.second - k}));
  } else {
    Path(m - k, {d.first + k, d.second - k}, out);
    out->push_back(Mth({d.first, k}));
  }
}

void SubProof(uint64_t m, Span d, bool whole, std::vector<Hash>* out) {
  if (m == d.second) {
    if (!whole) out->push_back(Mth(d));
    return;
  }
  const uint64_t k = SplitPoint(d.second);
  if (m <= k) {
    SubProof(m, {d.first, k}, whole, out);
    out->push_back(Mth({d.first + k, d.second - k}));
  } else {
    SubProof(m - k, {d.first + k, d.second - k}, false, out);
    out->push_back(Mth({d.first, k}));
  }
}

}  // namespace

Hash RootOf(const std::vector<Hash>& leaves) { return Mth({leaves.data(), leaves.size()}); }

std::vector<Hash> InclusionProof(const std::vector<Hash>& leaves, uint64_t index, uint64_t size) {
  std::vector<Hash> out;
  if (index < size && size <= leaves.size()) Path(index, {leaves.data(), size}, &out);
  return out;
}

bool VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size, const std::vector<Hash>& proof,
                     const Hash& root) {
  if (index >= size) return false;
  uint64_t fn = index, sn = size - 1;
  Hash r = leaf_hash;
  for (const Hash& p : proof) {
    if (sn == 0) return false;
    if ((fn & 1) || fn == sn) {
      r = NodeHash(p, r);
      if (!(fn & 1)) {
        while (!(fn & 1) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      r = NodeHash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn == 0 && r == root;
}

std::vector<Hash> ConsistencyProof(const std::vector<Hash>& leaves, uint64_t m, uint64_t n) {
  std::vector<Hash> out;
  if (m > 0 && m <= n && n <= leaves.size()) SubProof(m, {leaves.data(), n}, true, &out);
  return out;
}

bool VerifyConsistency(uint64_t m, uint64_t n, const Hash& root_m, const Hash& root_n,
                       const std::vector<Hash>& proof_in) {
  if (m > n) return false;
  if (m == n) return proof_in.empty() && root_m == root_n;
  if (m == 0) return proof_in.empty();  // the empty tree is a prefix of every tree
  if (proof_in.empty()) return false;
  std::vector<Hash> proof;
  if ((m & (m - 1)) == 0) proof.push_back(root_m);  // m is a power of two
  proof.insert(proof.end(), proof_in.begin(), proof_in.end());
  uint64_t fn = m - 1, sn = n - 1;
  while (fn & 1) {
    fn >>= 1;
    sn >>= 1;
  }
  Hash fr = proof[0], sr = proof[0];
  for (size_t i = 1; i < proof.size(); ++i) {
    const Hash& c = proof[i];
    if (sn == 0) return false;
    if ((fn & 1) || fn == sn) {
      fr = NodeHash(c, fr);
      sr = NodeHash(c, sr);
      if (!(fn & 1)) {
        while (!(fn & 1) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      sr = NodeHash(sr, c);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return fr == root_m && sr == root_n && sn == 0;
}

}  // namespace liaison::merkle
