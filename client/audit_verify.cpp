#include "client/audit_verify.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/audit_record.h"
#include "common/merkle.h"

namespace liaison::audit {
namespace {

std::string Column(sqlite3_stmt* s, int i) {
  const unsigned char* t = sqlite3_column_text(s, i);
  return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(sqlite3_column_bytes(s, i)))
           : std::string();
}

std::string HashHex(const merkle::Hash& h) { return Hex(std::string_view(reinterpret_cast<const char*>(h.data()), 32)); }

}  // namespace

Status VerifyAuditLog(const VerifyOptions& o, VerifyReport* report) {
  *report = VerifyReport{};
  sqlite3* db = nullptr;
  const std::string uri = "file:" + o.db_path + "?mode=ro";
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr) != SQLITE_OK) {
    std::string m = sqlite3_errmsg(db);
    sqlite3_close_v2(db);
    return Status::IoError("cannot open " + o.db_path + ": " + m);
  }
  struct Closer {
    sqlite3* db;
    ~Closer() { sqlite3_close_v2(db); }
  } closer{db};

  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
    const std::string r = Column(s, 0);
    sqlite3_finalize(s);
    if (r != "ok") return Status::Corruption("the database file fails its integrity check: " + r);
  } else {
    sqlite3_finalize(s);
    return Status::Corruption(std::string("not a readable SQLite database: ") + sqlite3_errmsg(db));
  }

  // Every checkpoint to check, by tree size: the export's own and the saved ones.
  std::multimap<uint64_t, std::pair<Checkpoint, std::string>> checkpoints;  // size -> (checkpoint, where)
  if (sqlite3_prepare_v2(db, "SELECT tree_size, text FROM checkpoints ORDER BY tree_size", -1, &s, nullptr) !=
      SQLITE_OK) {
    return Status::Corruption("the export has no checkpoints table");
  }
  while (sqlite3_step(s) == SQLITE_ROW) {
    const uint64_t size = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    auto cp = ParseCheckpoint(Column(s, 1));
    if (!cp.ok() || cp->tree_size != size) {
      sqlite3_finalize(s);
      return Status::Corruption("checkpoint row for tree size " + std::to_string(size) + " is malformed");
    }
    checkpoints.emplace(size, std::make_pair(*cp, "checkpoint in the export at tree size " + std::to_string(size)));
  }
  sqlite3_finalize(s);
  for (size_t i = 0; i < o.saved.size(); ++i) {
    checkpoints.emplace(o.saved[i].tree_size,
                        std::make_pair(o.saved[i], "saved checkpoint #" + std::to_string(i + 1) + " (tree size " +
                                                       std::to_string(o.saved[i].tree_size) + ")"));
  }
  const Checkpoint* previous = nullptr;
  for (const auto& [size, c] : checkpoints) {
    if (Status st = VerifyCheckpoint(c.first, o.public_key_pem); !st.ok()) return st.Annotate(c.second);
    // A larger tree is never older: anything else is an old checkpoint
    // presented as a newer one.
    if (previous && previous->tree_size < size && previous->time_ms > c.first.time_ms) {
      return Status::Corruption(c.second + " is dated before a checkpoint of a smaller tree (an older checkpoint "
                                           "presented as newer)");
    }
    previous = &c.first;
    report->checkpoints_verified++;
  }

  uint64_t total = 0;
  if (sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM audit_log", -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    total = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
  }
  sqlite3_finalize(s);

  auto check_root = [&](uint64_t size, const merkle::Hash& root) -> Status {
    auto [lo, hi] = checkpoints.equal_range(size);
    for (auto it = lo; it != hi; ++it) {
      if (it->second.first.root != root) {
        return Status::Corruption(it->second.second + ": its root " + HashHex(it->second.first.root) +
                                  " differs from the log's " + HashHex(root) +
                                  " (records were altered, removed, inserted or reordered)");
      }
    }
    return Status::Ok();
  };

  // An auditor's scoped export (client/audit_export.h) marks the records
  // outside its scope hash_only; a full export has no such column.
  bool has_hash_only = false;
  if (sqlite3_prepare_v2(db, "SELECT hash_only FROM audit_log LIMIT 0", -1, &s, nullptr) == SQLITE_OK) {
    has_hash_only = true;
  }
  sqlite3_finalize(s);
  const std::string select = std::string(
                                 "SELECT seq, time_ms, event, actor, cert_sha256, message_id, case_id, sender, "
                                 "recipient, message_type, tlp, purpose, decision, rules, policy_version, "
                                 "obligations, body_hmac, detail, leaf, leaf_hash, ") +
                             (has_hash_only ? "hash_only" : "0") + " FROM audit_log ORDER BY rowid";
  if (sqlite3_prepare_v2(db, select.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    return Status::Corruption("the export has no audit_log table");
  }
  merkle::Tree tree;
  if (Status st = check_root(0, tree.Root()); !st.ok()) {
    sqlite3_finalize(s);
    return st;
  }
  uint64_t expected = 1;
  Status result;
  while (sqlite3_step(s) == SQLITE_ROW) {
    const uint64_t seq = static_cast<uint64_t>(sqlite3_column_int64(s, 0));
    auto bad = [&](const std::string& why) {
      report->first_bad_seq = seq;
      return Status::Corruption("record " + std::to_string(seq) + ": " + why);
    };
    if (seq != expected) {
      report->first_bad_seq = expected;
      result = Status::Corruption(
          seq > expected ? "record " + std::to_string(expected) + ": missing or out of order (record " +
                               std::to_string(seq) + " stands in its place)"
                         : "record " + std::to_string(expected) + ": record " + std::to_string(seq) +
                               " stands in its place (records reordered or duplicated)");
      break;
    }
    const std::string leaf(static_cast<const char*>(sqlite3_column_blob(s, 18)),
                           static_cast<size_t>(sqlite3_column_bytes(s, 18)));
    if (sqlite3_column_bytes(s, 19) != 32) {
      result = bad("malformed leaf hash");
      break;
    }
    merkle::Hash stored;
    std::memcpy(stored.data(), sqlite3_column_blob(s, 19), 32);
    if (sqlite3_column_int(s, 20) != 0) {
      // Outside the auditor's scope: only its hash is known, and nothing
      // else may be claimed for it (it could not be checked).
      bool empty = leaf.empty() && sqlite3_column_int64(s, 1) == 0 && sqlite3_column_int64(s, 10) == 0;
      for (int c = 2; c <= 17 && empty; ++c) empty = c == 10 || sqlite3_column_bytes(s, c) == 0;
      if (!empty) {
        result = bad("marked hash-only but carries other columns (they cannot be verified)");
        break;
      }
      report->hash_only++;
      tree.Append(stored);
      ++expected;
      if (Status st = check_root(tree.size(), tree.Root()); !st.ok()) {
        report->first_bad_seq = seq;
        result = st;
        break;
      }
      if (o.progress && tree.size() % o.progress_every == 0) o.progress(tree.size(), total);
      continue;
    }
    const merkle::Hash h = merkle::LeafHash(leaf);
    if (h != stored) {
      result = bad("leaf bytes do not match their hash (the record was altered)");
      break;
    }
    auto r = DecodeLeaf(leaf);
    if (!r.ok()) {
      result = bad(r.status().message());
      break;
    }
    Record cols;
    cols.seq = seq;
    cols.time_ms = sqlite3_column_int64(s, 1);
    int i = 2;
    for (std::string* f : {&cols.event, &cols.actor, &cols.cert_sha256, &cols.message_id, &cols.case_id,
                           &cols.sender, &cols.recipient, &cols.message_type}) {
      *f = Column(s, i++);
    }
    cols.tlp = sqlite3_column_int(s, i++);
    for (std::string* f : {&cols.purpose, &cols.decision, &cols.rules, &cols.policy_version, &cols.obligations,
                           &cols.body_hmac, &cols.detail}) {
      *f = Column(s, i++);
    }
    if (!(*r == cols)) {
      result = bad("its columns differ from its signed leaf bytes (the record was altered)");
      break;
    }
    tree.Append(h);
    ++expected;
    if (Status st = check_root(tree.size(), tree.Root()); !st.ok()) {
      report->first_bad_seq = seq;
      result = st;
      break;
    }
    if (o.progress && tree.size() % o.progress_every == 0) o.progress(tree.size(), total);
  }
  sqlite3_finalize(s);
  report->records = tree.size();
  report->root = tree.Root();
  if (!result.ok()) return result;
  // A checkpoint beyond the end means the log was truncated.
  auto last = checkpoints.upper_bound(tree.size());
  if (last != checkpoints.end()) {
    return Status::Corruption("the log ends at record " + std::to_string(tree.size()) + " but " + last->second.second +
                              " covers " + std::to_string(last->first) + " records (the log was truncated)");
  }
  return Status::Ok();
}

Result<InclusionProof> ProveInclusion(const std::string& db_path, uint64_t seq, const Checkpoint& against) {
  sqlite3* db = nullptr;
  const std::string uri = "file:" + db_path + "?mode=ro";
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr) != SQLITE_OK) {
    std::string m = sqlite3_errmsg(db);
    sqlite3_close_v2(db);
    return Status::IoError("cannot open " + db_path + ": " + m);
  }
  struct Closer {
    sqlite3* db;
    ~Closer() { sqlite3_close_v2(db); }
  } closer{db};
  InclusionProof p;
  p.seq = seq;
  p.checkpoint = against;
  sqlite3_stmt* s = nullptr;
  if (p.checkpoint.origin.empty()) {
    if (sqlite3_prepare_v2(db, "SELECT text FROM checkpoints ORDER BY tree_size DESC LIMIT 1", -1, &s, nullptr) !=
            SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
      sqlite3_finalize(s);
      return Status::NotFound("the export has no checkpoint");
    }
    auto cp = ParseCheckpoint(Column(s, 0));
    sqlite3_finalize(s);
    if (!cp.ok()) return cp.status();
    p.checkpoint = *cp;
  }
  if (seq == 0 || seq > p.checkpoint.tree_size) {
    return Status::InvalidArgument("record " + std::to_string(seq) + " is not covered by the checkpoint (tree size " +
                                   std::to_string(p.checkpoint.tree_size) + ")");
  }
  std::vector<merkle::Hash> leaves;
  sqlite3_prepare_v2(db, "SELECT seq, leaf, leaf_hash FROM audit_log WHERE seq <= ? ORDER BY seq", -1, &s, nullptr);
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(p.checkpoint.tree_size));
  while (sqlite3_step(s) == SQLITE_ROW) {
    merkle::Hash h;
    if (sqlite3_column_bytes(s, 2) != 32) break;
    std::memcpy(h.data(), sqlite3_column_blob(s, 2), 32);
    leaves.push_back(h);
    if (static_cast<uint64_t>(sqlite3_column_int64(s, 0)) == seq) {
      p.leaf.assign(static_cast<const char*>(sqlite3_column_blob(s, 1)), static_cast<size_t>(sqlite3_column_bytes(s, 1)));
    }
  }
  sqlite3_finalize(s);
  if (leaves.size() != p.checkpoint.tree_size) {
    return Status::Corruption("the export holds " + std::to_string(leaves.size()) + " records, the checkpoint " +
                              std::to_string(p.checkpoint.tree_size));
  }
  if (merkle::RootOf(leaves) != p.checkpoint.root) return Status::Corruption("the export does not match the checkpoint");
  p.path = merkle::InclusionProof(leaves, seq - 1, p.checkpoint.tree_size);
  return p;
}

std::string FormatInclusionProof(const InclusionProof& p) {
  std::string out = "liaison-inclusion-proof v1\nseq " + std::to_string(p.seq) + "\nleaf " + Base64(p.leaf) + "\n";
  for (const auto& h : p.path) {
    out += "path " + Base64(std::string_view(reinterpret_cast<const char*>(h.data()), h.size())) + "\n";
  }
  return out + "checkpoint\n" + FormatCheckpoint(p.checkpoint);
}

Result<InclusionProof> ParseInclusionProof(std::string_view text) {
  InclusionProof p;
  auto next_line = [&](std::string_view* line) {
    const size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return false;
    *line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    return true;
  };
  std::string_view line;
  if (!next_line(&line) || line != "liaison-inclusion-proof v1") return Status::InvalidArgument("not an inclusion proof");
  if (!next_line(&line) || line.substr(0, 4) != "seq ") return Status::InvalidArgument("proof: no seq line");
  p.seq = std::strtoull(std::string(line.substr(4)).c_str(), nullptr, 10);
  if (!next_line(&line) || line.substr(0, 5) != "leaf ") return Status::InvalidArgument("proof: no leaf line");
  auto leaf = FromBase64(line.substr(5));
  if (!leaf.ok()) return Status::InvalidArgument("proof: bad leaf");
  p.leaf = *leaf;
  while (next_line(&line) && line.substr(0, 5) == "path ") {
    auto h = FromBase64(line.substr(5));
    if (!h.ok() || h->size() != 32) return Status::InvalidArgument("proof: bad path hash");
    merkle::Hash hash;
    std::copy(h->begin(), h->end(), hash.begin());
    p.path.push_back(hash);
  }
  if (line != "checkpoint") return Status::InvalidArgument("proof: no checkpoint");
  auto cp = ParseCheckpoint(text);
  if (!cp.ok()) return cp.status();
  p.checkpoint = *cp;
  return p;
}

Result<Record> VerifyInclusionProof(const InclusionProof& p, const std::string& public_key_pem) {
  if (Status s = VerifyCheckpoint(p.checkpoint, public_key_pem); !s.ok()) return s;
  auto r = DecodeLeaf(p.leaf);
  if (!r.ok()) return r.status();
  if (r->seq != p.seq) return Status::Corruption("the leaf is record " + std::to_string(r->seq) + ", not " + std::to_string(p.seq));
  if (!merkle::VerifyInclusion(merkle::LeafHash(p.leaf), p.seq - 1, p.checkpoint.tree_size, p.path, p.checkpoint.root)) {
    return Status::Corruption("the record is not in the log this checkpoint commits to (the proof does not verify)");
  }
  return r;
}

}  // namespace liaison::audit
