// Builds an audit export directly (the shape `liaison audit export` writes:
// `audit_log` in seq order without indexes, every field a column, no leaf
// bytes; `checkpoints`), with records and signed checkpoints at chosen tree
// sizes, for tests that need logs larger than a store can commit quickly,
// or checkpoints at exact sizes; or in the shape of earlier versions, with
// each record's leaf bytes in a `leaf` column too. Header-only; tests only.
#pragma once

#include <sqlite3.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/audit_record.h"
#include "common/checkpoint.h"
#include "common/merkle.h"

namespace liaison::test {

inline audit::Record BuiltRecord(uint64_t seq) {
  audit::Record r;
  r.seq = seq;
  r.time_ms = 1764400000000 + static_cast<int64_t>(seq);
  r.event = seq % 2 ? "queued" : "delivered";
  r.actor = "police";
  r.cert_sha256 = std::string(64, 'c');
  r.message_id = "0190a5c4-8d2e-7b3a-9c1d-" + std::to_string(100000000000 + seq / 2);
  r.case_id = "CASE-" + std::to_string(seq % 97);
  r.sender = "police";
  r.recipient = seq % 3 ? "school" : "social";
  r.message_type = "incident_report";
  r.tlp = 3;
  r.purpose = "safeguarding";
  r.decision = seq % 2 ? "permit" : "delivered";
  r.rules = "incidents-to-schools";
  r.policy_version = std::string(64, 'a');
  r.body_hmac = seq % 2 ? "" : std::string(64, 'b');
  return r;
}

struct BuildOptions {
  // The shape of exports of earlier versions: a `leaf` column after detail.
  bool with_leaf = false;
  // Changes a record before it is encoded and written (its leaf hash is of
  // the changed record).
  std::function<void(audit::Record&)> edit;
};

struct BuiltExport {
  std::vector<merkle::Hash> leaves;        // leaf hashes, index seq - 1
  std::vector<audit::Checkpoint> checkpoints;  // in size order
};

// Writes n records to a new file `path` and checkpoints at `sizes` (each
// <= n) signed by `signer`. Records whose seq is in `hash_only` are written
// as an auditor's scoped export writes records outside its scope (then the
// table has a hash_only column).
inline BuiltExport BuildExport(const std::string& path, uint64_t n, const audit::Signer& signer,
                               const std::set<uint64_t>& sizes, const std::set<uint64_t>& hash_only = {},
                               const BuildOptions& options = {}) {
  BuiltExport out;
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  const std::string hash_only_column = hash_only.empty() ? "" : ", hash_only INT";
  const std::string schema =
      "CREATE TABLE audit_log(seq INT, time_ms INT, event TEXT, actor TEXT, cert_sha256 TEXT, message_id TEXT,"
      " case_id TEXT, sender TEXT, recipient TEXT, message_type TEXT, tlp INT, purpose TEXT, decision TEXT,"
      " rules TEXT, policy_version TEXT, obligations TEXT, body_hmac TEXT, detail TEXT," +
      std::string(options.with_leaf ? " leaf BLOB," : "") + " leaf_hash BLOB" + hash_only_column +
      ");CREATE TABLE checkpoints(tree_size INT, time_ms INT, text TEXT);BEGIN;";
  sqlite3_exec(db, schema.c_str(), nullptr, nullptr, nullptr);
  std::string insert = "INSERT INTO audit_log VALUES(?";
  const int columns = 19 + (options.with_leaf ? 1 : 0) + (hash_only.empty() ? 0 : 1);
  for (int i = 1; i < columns; ++i) insert += ",?";
  insert += ")";
  sqlite3_stmt* row = nullptr;
  sqlite3_prepare_v2(db, insert.c_str(), -1, &row, nullptr);
  sqlite3_stmt* cp = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO checkpoints VALUES(?,?,?)", -1, &cp, nullptr);
  merkle::Tree tree;
  auto checkpoint_at = [&](uint64_t size) {
    audit::Checkpoint c = signer.Sign("liaison/test", size, tree.Root(), 1764400000000 + static_cast<int64_t>(size));
    const std::string text = audit::FormatCheckpoint(c);
    sqlite3_bind_int64(cp, 1, static_cast<int64_t>(size));
    sqlite3_bind_int64(cp, 2, c.time_ms);
    sqlite3_bind_text(cp, 3, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    sqlite3_step(cp);
    sqlite3_reset(cp);
    out.checkpoints.push_back(c);
  };
  if (sizes.count(0)) checkpoint_at(0);
  for (uint64_t seq = 1; seq <= n; ++seq) {
    audit::Record r = BuiltRecord(seq);
    if (options.edit) options.edit(r);
    const std::string leaf = audit::EncodeLeaf(r);
    const merkle::Hash h = merkle::LeafHash(leaf);
    const bool hidden = hash_only.count(seq) > 0;
    if (hidden) r = audit::Record{};
    sqlite3_bind_int64(row, 1, static_cast<int64_t>(seq));
    sqlite3_bind_int64(row, 2, r.time_ms);
    int i = 3;
    for (const std::string* f : {&r.event, &r.actor, &r.cert_sha256, &r.message_id, &r.case_id, &r.sender,
                                 &r.recipient, &r.message_type}) {
      sqlite3_bind_text(row, i++, f->data(), static_cast<int>(f->size()), SQLITE_TRANSIENT);
    }
    sqlite3_bind_int64(row, i++, r.tlp);
    for (const std::string* f : {&r.purpose, &r.decision, &r.rules, &r.policy_version, &r.obligations, &r.body_hmac,
                                 &r.detail}) {
      sqlite3_bind_text(row, i++, f->data(), static_cast<int>(f->size()), SQLITE_TRANSIENT);
    }
    if (options.with_leaf) {
      const std::string stored_leaf = hidden ? std::string() : leaf;
      sqlite3_bind_blob(row, i++, stored_leaf.data(), static_cast<int>(stored_leaf.size()), SQLITE_TRANSIENT);
    }
    sqlite3_bind_blob(row, i++, h.data(), 32, SQLITE_TRANSIENT);
    if (!hash_only.empty()) sqlite3_bind_int(row, i++, hidden ? 1 : 0);
    sqlite3_step(row);
    sqlite3_reset(row);
    out.leaves.push_back(h);
    tree.Append(h);
    if (sizes.count(seq)) checkpoint_at(seq);
  }
  sqlite3_finalize(row);
  sqlite3_finalize(cp);
  sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  return out;
}

}  // namespace liaison::test
